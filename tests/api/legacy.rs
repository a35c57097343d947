//! Moving over from the Python service (SPEC §10), against real PostgreSQL and S3: `iotsupport
//! migrate` adopting its database at each Alembic revision, refusing revisions it does not know,
//! and `iotsupport migrate-to-s3` moving a legacy `ASSETS_DIR` / `COREDUMPS_DIR` tree into the
//! bucket. The legacy schema is built from `tests/fixtures/legacy_schema/` (written from the
//! schema facts in `../shared/docs/legacy-schema.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, TimeZone, Utc};
use iotsupport::config::{S3Config, Secret};
use iotsupport::storage::backend::ObjectStoreBackend;
use iotsupport::storage::{ObjectKey, ObjectStorage};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::firmware_support::{sha256_hex, Build};
use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_iotsupport");

/// The Python service's Alembic steps, in order.
const STEPS: [(&str, &str); 7] = [
    ("002", include_str!("../fixtures/legacy_schema/002.sql")),
    ("003", include_str!("../fixtures/legacy_schema/003.sql")),
    ("004", include_str!("../fixtures/legacy_schema/004.sql")),
    ("005", include_str!("../fixtures/legacy_schema/005.sql")),
    ("006", include_str!("../fixtures/legacy_schema/006.sql")),
    ("007", include_str!("../fixtures/legacy_schema/007.sql")),
    ("008", include_str!("../fixtures/legacy_schema/008.sql")),
];

/// Legacy core-dump files (name, content) of device `abcdefgh`; the database rows name them.
const DUMP_PARSED: (&str, &[u8]) = ("coredump_20250102T030405_000001Z.dmp", b"dump1");
const DUMP_PENDING: (&str, &[u8]) = ("coredump_20250103T030405_000002Z.dmp", b"dump-2");
/// A row of device `bcdefghi` whose file is not in COREDUMPS_DIR (until the test adds it).
const DUMP_MISSING: (&str, &[u8]) = ("coredump_20250104T030405_000003Z.dmp", b"dump--3");

/// A PostgreSQL database as the Python service left it, and the S3 server to migrate into.
struct Legacy {
    db_url: String,
    s3_endpoint: String,
    bucket: String,
}

impl Legacy {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.db_url.clone()),
            ("S3_ENDPOINT_URL".into(), self.s3_endpoint.clone()),
            ("S3_BUCKET_NAME".into(), self.bucket.clone()),
            ("S3_ACCESS_KEY_ID".into(), "test".into()),
            ("S3_SECRET_ACCESS_KEY".into(), "test".into()),
            ("S3_TIMEOUT_SECONDS".into(), "5".into()),
            ("LOG_FORMAT".into(), "text".into()),
        ]
    }

    async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.db_url).await.unwrap()
    }

    fn s3_config(&self) -> S3Config {
        S3Config {
            endpoint_url: self.s3_endpoint.clone(),
            access_key_id: Some(Secret::new("test")),
            secret_access_key: Some(Secret::new("test")),
            bucket: self.bucket.clone(),
            region: "us-east-1".into(),
            request_timeout: std::time::Duration::from_secs(5),
        }
    }

    fn storage(&self) -> ObjectStoreBackend {
        ObjectStoreBackend::s3(&self.s3_config()).unwrap()
    }

    /// Every object in the bucket with its content (empty when the bucket does not exist).
    async fn objects(&self) -> BTreeMap<String, (Vec<u8>, DateTime<Utc>)> {
        let store = self.storage();
        let mut out = BTreeMap::new();
        for prefix in ["firmware", "coredumps"] {
            let Ok(listed) = store.list(prefix).await else {
                continue;
            };
            for info in listed {
                let key = ObjectKey::parse(&info.key).unwrap();
                let body = store.get(&key, None).await.unwrap().bytes().await.unwrap();
                out.insert(info.key.clone(), (body.to_vec(), info.last_modified));
            }
        }
        out
    }
}

/// Builds the Python service's schema up to `revision`, stamps it, and fills it with a fleet.
async fn legacy_database(test: &str, revision: &str) -> Option<Legacy> {
    let (admin, s3_endpoint) = production_services(test)?;
    let db_url = fresh_postgres_database(&admin).await;
    let legacy = Legacy {
        db_url,
        s3_endpoint,
        bucket: unique_bucket(),
    };
    let mut conn = legacy.conn().await;
    for (step, sql) in STEPS.iter().take_while(|(step, _)| *step <= revision) {
        sqlx::raw_sql(*sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("legacy step {step}: {e}"));
    }
    exec(
        &mut conn,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,
            CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
    )
    .await;
    sqlx::query("INSERT INTO alembic_version (version_num) VALUES ($1)")
        .bind(revision)
        .execute(&mut conn)
        .await
        .unwrap();
    seed(&mut conn, revision).await;
    Some(legacy)
}

async fn exec(conn: &mut PgConnection, sql: &'static str) {
    sqlx::raw_sql(sql).execute(conn).await.unwrap();
}

async fn seed(conn: &mut PgConnection, revision: &str) {
    exec(
        conn,
        "INSERT INTO device_models (code, name, firmware_version, created_at, updated_at) VALUES
            ('sensor', 'Sensor', '1.0.0', '2025-01-02 03:04:05', '2025-01-02 03:04:05'),
            ('lamp', 'Lamp', NULL, '2025-01-02 03:04:05', '2025-01-02 03:04:05');
         INSERT INTO devices (key, device_model_id, config, device_name, rotation_state,
                              cached_secret, secret_created_at, last_rotation_completed_at,
                              created_at, updated_at) VALUES
            ('abcdefgh', 1, '{\"deviceName\": \"kitchen\"}', 'kitchen', 'QUEUED', 'gAAAAAB-legacy',
             '2025-01-02 03:04:05', '2025-01-03 04:05:06', '2025-01-02 03:04:05', '2025-01-02 03:04:05'),
            ('bcdefghi', 1, '{}', NULL, 'OK', NULL, NULL, NULL, '2025-01-02 03:04:05', '2025-01-02 03:04:05');
         INSERT INTO settings (key, value) VALUES ('LAST_SCHEDULED_AT', '2025-01-01T00:00:00');",
    )
    .await;
    if revision < "005" {
        return;
    }
    let with_filename = revision <= "006";
    let rows = [
        (1, DUMP_PARSED, "PARSED", Some("legacy sidecar report")),
        (1, DUMP_PENDING, "PENDING", None),
        (2, DUMP_MISSING, "ERROR", Some("sidecar failed")),
    ];
    for (device_id, (filename, content), status, output) in rows {
        let (columns, filename) = if with_filename {
            ("filename, ", Some(filename))
        } else {
            ("", None)
        };
        let values = if with_filename { "$5, " } else { "" };
        let sql = format!(
            "INSERT INTO coredumps (device_id, {columns}chip, firmware_version, size, parse_status,
                 parsed_output, uploaded_at)
             VALUES ($1, {values}'esp32', '1.0.0', $2, $3, $4, '2025-01-02 03:04:05')"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device_id)
            .bind(content.len() as i32)
            .bind(status)
            .bind(output);
        if let Some(filename) = filename {
            query = query.bind(filename);
        }
        query.execute(&mut *conn).await.unwrap();
    }
    if revision >= "006" {
        exec(
            conn,
            "INSERT INTO firmware_versions (device_model_id, version, uploaded_at)
             VALUES (1, '0.9.0', '2024-12-01 00:00:00')",
        )
        .await;
    }
}

fn run(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run iotsupport")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

async fn count(conn: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

async fn has_column(conn: &mut PgConnection, table: &str, column: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2)",
    )
    .bind(table)
    .bind(column)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The service, in-process, on an adopted database and its bucket.
async fn serve(legacy: &Legacy, test: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut overrides = vec![
        ("DATABASE_URL", legacy.db_url.as_str()),
        ("S3_BUCKET_NAME", legacy.bucket.as_str()),
    ];
    overrides.extend_from_slice(extra);
    spawn_app_with(Stack::Production, test, &overrides, Default::default())
        .await
        .expect("services are there: the legacy database was built")
}

#[tokio::test]
async fn migrate_adopts_every_known_revision_keeping_rows_ids_and_times() {
    for revision in ["005", "006", "007", "008"] {
        let test = format!("adopt_{revision}");
        let Some(legacy) = legacy_database(&test, revision).await else {
            return;
        };
        let out = assert_success(&run(&legacy.env(), &["migrate", "status"]));
        assert!(
            out.contains(&format!("Alembic revision \"{revision}\"")),
            "{out}"
        );

        let out = assert_success(&run(&legacy.env(), &["migrate"]));
        assert!(
            out.contains(&format!(
                "adopted the Python service's database at Alembic revision {revision}"
            )),
            "{revision}: {out}"
        );
        let legacy_files = revision <= "006";
        if legacy_files {
            assert!(
                out.contains("kept coredumps.filename: 3 legacy core dump(s)"),
                "{out}"
            );
        }

        let mut conn = legacy.conn().await;
        assert_eq!(
            count(&mut conn, "SELECT count(*) FROM device_models").await,
            2
        );
        assert_eq!(count(&mut conn, "SELECT count(*) FROM devices").await, 2);
        assert_eq!(count(&mut conn, "SELECT count(*) FROM coredumps").await, 3);
        assert_eq!(
            count(&mut conn, "SELECT count(*) FROM firmware_versions").await,
            i64::from(revision >= "006")
        );
        // Kept although unused: the rotation bookkeeping and the Alembic stamp (renamed).
        assert_eq!(count(&mut conn, "SELECT count(*) FROM settings").await, 1);
        let stamp: String = sqlx::query_scalar("SELECT version_num FROM alembic_version_adopted")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(stamp, revision);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM devices ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(ids, [1, 2]);
        // Naive UTC timestamps became the same instants.
        let created: DateTime<Utc> =
            sqlx::query_scalar("SELECT created_at FROM devices WHERE key = 'abcdefgh'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(created, Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        assert_eq!(
            has_column(&mut conn, "coredumps", "filename").await,
            legacy_files
        );
        if legacy_files {
            assert_eq!(
                count(
                    &mut conn,
                    "SELECT count(*) FROM coredumps WHERE filename IS NOT NULL"
                )
                .await,
                3
            );
        }

        // Idempotent, and `status` agrees.
        let again = assert_success(&run(&legacy.env(), &["migrate"]));
        assert!(again.contains("applied 0 migration(s)"), "{again}");
        assert!(!again.contains("adopted"), "{again}");
        let status = assert_success(&run(&legacy.env(), &["migrate", "status"]));
        assert!(status.contains(" 0 pending"), "{status}");
        assert!(!status.contains("Alembic"), "{status}");

        // The API serves the adopted data and writes to it with our semantics.
        let app = serve(&legacy, &test, &[]).await;
        let (status, models) = call(&app, http::Method::GET, "/api/device-models", None).await;
        assert_eq!(status, 200);
        let codes: Vec<&str> = models["device_models"]
            .as_array()
            .unwrap_or_else(|| panic!("{models}"))
            .iter()
            .map(|m| m["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes.len(), 2, "{models}");
        assert!(codes.contains(&"sensor") && codes.contains(&"lamp"));
        let (status, device) = call(&app, http::Method::GET, "/api/devices/1", None).await;
        assert_eq!(status, 200, "{device}");
        assert_eq!(device["key"], "abcdefgh");
        assert_eq!(device["device_name"], "kitchen");
        assert_eq!(device["active"], true);
        // The Python service's rotation columns keep their values (naive UTC → TIMESTAMPTZ).
        // QUEUED as adopted; serve's rotation worker may already have started it (PENDING).
        assert!(
            ["QUEUED", "PENDING"].contains(&device["rotation_state"].as_str().unwrap_or("")),
            "{device}"
        );
        assert_eq!(
            device["secret_created_at"], "2025-01-02T03:04:05Z",
            "{device}"
        );
        assert_eq!(
            device["last_rotation_completed_at"], "2025-01-03T04:05:06Z",
            "{device}"
        );
        assert_eq!(device["client_id"], "iotdevice-sensor-abcdefgh");
        let (status, dumps) = call(&app, http::Method::GET, "/api/devices/1/coredumps", None).await;
        assert_eq!(status, 200, "{dumps}");
        assert_eq!(dumps["count"], 2, "{dumps}");
        let (status, created) = call(
            &app,
            http::Method::POST,
            "/api/devices",
            Some(json!({"device_model_id": 1, "config": "{}"})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(
            created["id"], 3,
            "the id sequence continues after the legacy rows"
        );
        let (status, model) = call(
            &app,
            http::Method::POST,
            "/api/device-models",
            Some(json!({"code": "plug", "name": "Plug"})),
        )
        .await;
        assert_eq!(status, 201, "{model}");
        let (status, duplicate) = call(
            &app,
            http::Method::POST,
            "/api/device-models",
            Some(json!({"code": "sensor", "name": "Again"})),
        )
        .await;
        assert_eq!(
            status, 409,
            "legacy unique constraint recognised: {duplicate}"
        );
        // Models with devices can no longer be deleted (the legacy FK cascaded).
        let (status, _) = call(&app, http::Method::DELETE, "/api/device-models/1", None).await;
        assert_eq!(status, 409);
        app.stop().await;

        if legacy_files {
            // The guard: the column goes only when no row names a legacy file any more.
            exec(
                &mut conn,
                "DELETE FROM coredumps WHERE filename LIKE 'coredump_2025010%'",
            )
            .await;
            let out = assert_success(&run(&legacy.env(), &["migrate"]));
            assert!(
                out.contains("dropped coredumps.filename"),
                "{revision}: {out}"
            );
            assert!(!has_column(&mut conn, "coredumps", "filename").await);
        }
    }
}

#[tokio::test]
async fn migrate_refuses_unknown_revisions_and_lying_stamps_without_changing_anything() {
    for (revision, stamp, expected) in [
        (
            "004",
            "004",
            "revision 004; iotsupport adopts revisions 005 to 008 only",
        ),
        (
            "008",
            "009",
            "Alembic revision iotsupport does not know (\"009\")",
        ),
        // The stamp says 007 (filename dropped) but the column is still there.
        ("006", "007", "coredumps.filename is present"),
    ] {
        let Some(legacy) = legacy_database(&format!("refuse_{stamp}"), revision).await else {
            return;
        };
        let mut conn = legacy.conn().await;
        sqlx::query("UPDATE alembic_version SET version_num = $1")
            .bind(stamp)
            .execute(&mut conn)
            .await
            .unwrap();
        let output = run(&legacy.env(), &["migrate"]);
        assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert_eq!(
            count(&mut conn, "SELECT count(*) FROM alembic_version").await,
            1
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT count(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations'"
            )
            .await,
            0
        );
        let id_type: String = sqlx::query_scalar(
            "SELECT data_type FROM information_schema.columns
             WHERE table_name = 'devices' AND column_name = 'id'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(id_type, "integer", "the legacy schema was left alone");
    }
}

/// The Python service's files: ASSETS_DIR and COREDUMPS_DIR.
struct LegacyTree {
    _root: tempfile::TempDir,
    assets: PathBuf,
    coredumps: PathBuf,
    builds: Vec<Build>,
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn legacy_tree() -> LegacyTree {
    let root = tempfile::TempDir::new().unwrap();
    let assets = root.path().join("assets");
    let coredumps = root.path().join("coredumps");
    let builds = vec![Build::new("1.0.0", "a"), Build::new("1.1.0", "b")];
    // Built in this order, a day apart; 1.1.0 is the newer build although it sorts first as text.
    for (i, build) in builds.iter().enumerate() {
        let path = assets.join(format!("sensor/firmware-{}.zip", build.version));
        write(&path, &build.zip("sensor"));
        let built = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(1_735_689_600 + 86_400 * i as u64);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(built)
            .unwrap();
    }
    write(
        &assets.join("sensor/firmware-2.0.0.zip"),
        b"not a zip at all",
    );
    write(&assets.join("sensor/readme.txt"), b"ignored");
    write(&assets.join("firmware-sensor.bin"), b"legacy flat binary");
    write(
        &assets.join("ghost/firmware-1.0.0.zip"),
        &Build::new("1.0.0", "g").zip("ghost"),
    );
    write(
        &coredumps.join("abcdefgh").join(DUMP_PARSED.0),
        DUMP_PARSED.1,
    );
    write(
        &coredumps.join("abcdefgh").join(DUMP_PENDING.0),
        DUMP_PENDING.1,
    );
    write(
        &coredumps.join("abcdefgh/coredump_20240101T000000_000000Z.dmp"),
        b"orphan",
    );
    write(
        &coredumps.join("zzzzzzzz/coredump_20240101T000000_000000Z.dmp"),
        b"nobody",
    );
    LegacyTree {
        _root: root,
        assets,
        coredumps,
        builds,
    }
}

/// Every file under `dir` with its SHA-256 and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let meta = std::fs::metadata(&path).unwrap();
                let hash = sha256_hex(&std::fs::read(&path).unwrap());
                out.insert(path, (hash, meta.modified().unwrap()));
            }
        }
    }
    out
}

fn tree_env(legacy: &Legacy, tree: &LegacyTree) -> Vec<(String, String)> {
    let mut env = legacy.env();
    env.push(("ASSETS_DIR".into(), tree.assets.display().to_string()));
    env.push(("COREDUMPS_DIR".into(), tree.coredumps.display().to_string()));
    env
}

fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    env.push((key.to_string(), value.to_string()));
    env
}

/// What must not change when migrate-to-s3 writes nothing.
async fn untouched(legacy: &Legacy, conn: &mut PgConnection) {
    assert!(legacy.objects().await.is_empty(), "nothing in the bucket");
    assert_eq!(
        count(conn, "SELECT count(*) FROM firmware_versions").await,
        0
    );
    assert_eq!(
        count(
            conn,
            "SELECT count(*) FROM coredumps WHERE filename IS NOT NULL"
        )
        .await,
        3
    );
    assert_eq!(count(conn, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(
        count(conn, "SELECT count(*) FROM legacy_coredump_files").await,
        0
    );
}

#[tokio::test]
async fn migrate_to_s3_moves_the_legacy_tree_once_and_never_touches_it() {
    let Some(legacy) = legacy_database("migrate_to_s3", "005").await else {
        return;
    };
    assert_success(&run(&legacy.env(), &["migrate"]));
    let tree = legacy_tree();
    let before = snapshot(tree._root.path());
    let env = tree_env(&legacy, &tree);
    let mut conn = legacy.conn().await;

    // Either service unreachable: non-zero exit before anything is written.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let output = run(&with(&env, "S3_ENDPOINT_URL", &closed), &["migrate-to-s3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("S3 is not reachable"),
        "{}",
        stderr(&output)
    );
    let dead_db = format!("postgres://nobody:nothing@127.0.0.1:{}/none", free_port());
    let output = run(&with(&env, "DATABASE_URL", &dead_db), &["migrate-to-s3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Cannot connect to database"),
        "{}",
        stderr(&output)
    );
    untouched(&legacy, &mut conn).await;

    // Dry run: says what it would do, writes nothing (not even the bucket).
    let out = assert_success(&run(&env, &["migrate-to-s3", "--dry-run"]));
    for expected in [
        "[DRY RUN] Migration complete.",
        "[DRY RUN] Would migrate firmware: sensor/1.0.0",
        "[DRY RUN] Would migrate firmware: sensor/1.1.0",
        "[DRY RUN] Would migrate coredump: abcdefgh/coredump_20250103T030405_000002Z.dmp -> coredumps/abcdefgh/2.dmp",
        "Firmware ZIPs migrated: 2",
        "Firmware ZIPs skipped:  3",
        "Coredumps migrated:     2",
        "Coredumps skipped:      2",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    untouched(&legacy, &mut conn).await;

    // Rows still naming legacy files are neither dangling nor repaired by reconcile.
    let report: Value = serde_json::from_str(&assert_success(&run(
        &env,
        &["reconcile", "--json", "--repair"],
    )))
    .unwrap();
    assert_eq!(report["report"]["legacy_coredumps"], 3, "{report}");
    assert_eq!(
        report["report"]["dangling_coredumps"],
        json!([]),
        "{report}"
    );
    assert_eq!(report["repair"]["coredumps_marked_error"], 0, "{report}");

    // The real run.
    let output = run(&env, &["migrate-to-s3"]);
    let out = assert_success(&output);
    for expected in [
        "\nMigration complete.",
        "Firmware ZIPs migrated: 2",
        "Firmware ZIPs skipped:  3",
        "Coredumps migrated:     2",
        "Coredumps skipped:      2",
        "Warnings (",
        "Model directory 'ghost' has no matching DB record, skipping",
        "Failed to migrate firmware sensor/2.0.0: Firmware must be uploaded as a ZIP bundle",
        "Orphaned coredump file abcdefgh/coredump_20240101T000000_000000Z.dmp: no matching DB record",
        "Device directory 'zzzzzzzz' has no matching DB record, skipping",
        "1 core dump row(s) still name a legacy file that was not found in COREDUMPS_DIR (e.g. bcdefghi/coredump_20250104T030405_000003Z.dmp)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains("    - Skipping legacy flat binary"),
        "a flat binary is no warning:\n{out}"
    );
    assert!(stderr(&output).contains("Skipping legacy flat binary: firmware-sensor.bin"));
    assert!(
        stderr(&output).contains("migrate_to_s3"),
        "per-item log events"
    );

    // The bucket holds exactly the two bundles and the two matched dumps.
    let objects = legacy.objects().await;
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for build in &tree.builds {
        for (name, content) in build.artifacts() {
            expected.insert(
                format!("firmware/sensor/{}/{name}", build.version),
                content.to_vec(),
            );
        }
    }
    expected.insert("coredumps/abcdefgh/1.dmp".into(), DUMP_PARSED.1.to_vec());
    expected.insert("coredumps/abcdefgh/2.dmp".into(), DUMP_PENDING.1.to_vec());
    let stored: BTreeMap<String, Vec<u8>> = objects
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(stored, expected);

    // Rows: versions with their facts and build times; the current version untouched.
    let versions: Vec<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT version, firmware_bin_sha256, uploaded_at FROM firmware_versions ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(versions.len(), 2);
    for ((version, sha, uploaded_at), (i, build)) in
        versions.iter().zip(tree.builds.iter().enumerate())
    {
        assert_eq!(version, &build.version);
        assert_eq!(sha.as_deref(), Some(sha256_hex(&build.bin).as_str()));
        assert_eq!(
            uploaded_at.timestamp(),
            1_735_689_600 + 86_400 * i as i64,
            "uploaded_at is the bundle file's time"
        );
    }
    let current: Option<String> =
        sqlx::query_scalar("SELECT firmware_version FROM device_models WHERE code = 'sensor'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(current.as_deref(), Some("1.0.0"));
    // Dumps: file names cleared for the moved two, a parse queued for the PENDING one only (the
    // PARSED one keeps the Python service's report); the third still waits for its file.
    let dumps: Vec<(i64, Option<String>, String)> =
        sqlx::query_as("SELECT id, filename, parse_status FROM coredumps ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        dumps,
        [
            (1, None, "PARSED".to_string()),
            (2, None, "PENDING".to_string()),
            (3, Some(DUMP_MISSING.0.to_string()), "ERROR".to_string())
        ]
    );
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM jobs")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(payloads.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&payloads[0]).unwrap()["coredump_id"],
        2
    );
    assert!(
        has_column(&mut conn, "coredumps", "filename").await,
        "kept: row 3 needs it"
    );
    assert_eq!(
        snapshot(tree._root.path()),
        before,
        "source files untouched"
    );

    // A second run changes nothing and says so.
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    for expected in [
        "Firmware ZIPs migrated: 0",
        "Firmware ZIPs already migrated: 2",
        "Coredumps migrated:     0",
        "Coredumps already migrated: 2",
        "Nothing to migrate: no changes were made.",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(legacy.objects().await, objects, "no object rewritten");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 1);

    // The missing file turns up: it is moved, its ERROR dump queued for a parse, and with no
    // legacy row left the filename column goes.
    write(
        &tree.coredumps.join("bcdefghi").join(DUMP_MISSING.0),
        DUMP_MISSING.1,
    );
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(out.contains("Coredumps migrated:     1"), "{out}");
    assert!(
        out.contains("dropped the coredumps.filename column"),
        "{out}"
    );
    assert!(!has_column(&mut conn, "coredumps", "filename").await);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 2);
    // And a run after that still knows every file.
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(out.contains("Coredumps migrated:     0"), "{out}");
    assert!(out.contains("Coredumps already migrated: 3"), "{out}");
    assert!(out.contains("Nothing to migrate"), "{out}");
    assert!(out.contains("Coredump migration already complete"), "{out}");

    // The API serves the migrated data.
    let app = serve(&legacy, "migrate_to_s3", &[("IOT_DEVICE_KEY_AUTH", "true")]).await;
    let firmware = app.get("/api/iot/firmware?device_key=abcdefgh").await;
    assert_eq!(firmware.status(), 200);
    assert_eq!(
        firmware.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", sha256_hex(&tree.builds[0].bin))
    );
    assert_eq!(
        firmware.bytes().await.unwrap().as_ref(),
        tree.builds[0].bin.as_slice()
    );
    let dump = app.get("/api/devices/1/coredumps/2/download").await;
    assert_eq!(dump.status(), 200);
    assert_eq!(dump.bytes().await.unwrap().as_ref(), DUMP_PENDING.1);
    let (status, versions) = call(
        &app,
        http::Method::GET,
        "/api/device-models/1/firmware/versions",
        None,
    )
    .await;
    assert_eq!(status, 200, "{versions}");
    app.stop().await;
}

#[tokio::test]
async fn migrate_to_s3_stopped_by_s3_half_way_leaves_nothing_half_written_and_a_rerun_finishes() {
    use iotsupport::db::Db;
    use iotsupport::migrate_to_s3::{self, Options};
    use iotsupport::storage::faulty::{Fault, FaultyStorage};
    use iotsupport::storage::Operation;

    let Some(legacy) = legacy_database("migrate_to_s3_faults", "005").await else {
        return;
    };
    assert_success(&run(&legacy.env(), &["migrate"]));
    iotsupport::storage::bucket::ensure_bucket(&legacy.s3_config())
        .await
        .unwrap();
    let tree = legacy_tree();
    let faulty = FaultyStorage::new(std::sync::Arc::new(legacy.storage()));
    let storage: iotsupport::storage::Storage = std::sync::Arc::new(faulty.clone());
    let db = Db::Postgres(sqlx::PgPool::connect(&legacy.db_url).await.unwrap());
    let options = Options {
        assets_dir: Some(tree.assets.clone()),
        coredumps_dir: Some(tree.coredumps.clone()),
        dry_run: false,
        max_entry_bytes: 10 * 1024 * 1024,
        concurrency: 4,
    };
    let mut conn = legacy.conn().await;

    // S3 refuses one artifact of the second bundle: the run stops; 1.0.0 is complete, 1.1.0 has
    // neither a row nor any of its objects, and no core dump was touched.
    faulty.inject(Fault::always(Operation::Put).for_keys_containing("1.1.0/firmware.map"));
    let error = migrate_to_s3::run(&db, &storage, &options)
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("Migration failed"), "{error}");
    let versions: Vec<String> = sqlx::query_scalar("SELECT version FROM firmware_versions")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, ["1.0.0"]);
    let keys: Vec<String> = legacy.objects().await.into_keys().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("firmware/sensor/1.0.0/")),
        "{keys:?}"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM coredumps WHERE filename IS NOT NULL"
        )
        .await,
        3
    );

    // Next, S3 refuses one dump: that row keeps its file name and gets no job; the others go on.
    faulty.heal();
    faulty.inject(Fault::always(Operation::Put).for_keys_containing("abcdefgh/2.dmp"));
    migrate_to_s3::run(&db, &storage, &options)
        .await
        .unwrap_err();
    let pending: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM coredumps WHERE filename IS NOT NULL ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(pending, [2, 3]);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 0);
    assert!(!legacy
        .objects()
        .await
        .contains_key("coredumps/abcdefgh/2.dmp"));
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM firmware_versions").await,
        2
    );

    // S3 healthy again: the rerun finishes the job and repeats nothing.
    faulty.heal();
    let summary = migrate_to_s3::run(&db, &storage, &options).await.unwrap();
    assert_eq!(summary.firmware_migrated, 0);
    assert_eq!(summary.firmware_unchanged, 2);
    assert_eq!(summary.coredumps_migrated, 1);
    assert_eq!(summary.coredumps_unchanged, 1);
    assert_eq!(
        legacy.objects().await["coredumps/abcdefgh/2.dmp"].0,
        DUMP_PENDING.1
    );
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 1);
}

#[tokio::test]
async fn migrate_to_s3_on_revision_008_fills_in_versions_the_python_service_already_moved() {
    let Some(legacy) = legacy_database("migrate_to_s3_008", "008").await else {
        return;
    };
    assert_success(&run(&legacy.env(), &["migrate"]));
    // The Python service's own migrate-to-s3 uploaded 0.9.0 (no hashes in its row); its bundle
    // is still in ASSETS_DIR, next to a newer one.
    let tree = legacy_tree();
    let old = Build::new("0.9.0", "o");
    write(
        &tree.assets.join("sensor/firmware-0.9.0.zip"),
        &old.zip("sensor"),
    );
    let out = assert_success(&run(&tree_env(&legacy, &tree), &["migrate-to-s3"]));
    assert!(out.contains("Firmware ZIPs migrated: 3"), "{out}");
    assert!(
        out.contains("No legacy core dumps in the database"),
        "COREDUMPS_DIR is left alone at 008: {out}"
    );
    assert!(out.contains("Coredumps migrated:     0"), "{out}");

    let mut conn = legacy.conn().await;
    let (sha, uploaded_at): (Option<String>, DateTime<Utc>) = sqlx::query_as(
        "SELECT firmware_bin_sha256, uploaded_at FROM firmware_versions WHERE version = '0.9.0'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(sha.as_deref(), Some(sha256_hex(&old.bin).as_str()));
    assert_eq!(
        uploaded_at,
        Utc.with_ymd_and_hms(2024, 12, 1, 0, 0, 0).unwrap(),
        "a filled-in row keeps its place in the retention order"
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM firmware_versions").await,
        3
    );
    let objects = legacy.objects().await;
    for (name, content) in old.artifacts() {
        assert_eq!(objects[&format!("firmware/sensor/0.9.0/{name}")].0, content);
    }
    let again = assert_success(&run(&tree_env(&legacy, &tree), &["migrate-to-s3"]));
    assert!(
        again.contains("Firmware ZIPs already migrated: 3"),
        "{again}"
    );
}
