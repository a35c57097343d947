//! The Python service's world, for the tests of moving over from it (SPEC §10) against real
//! PostgreSQL and S3: its database at an Alembic revision (built from
//! `tests/fixtures/legacy_schema/`, written from the schema facts in
//! `../shared/docs/legacy-schema.md`) with a small fleet in it, its `ASSETS_DIR` / `COREDUMPS_DIR`
//! tree, and the `iotsupport` binary run against them. The tests are in `legacy_adopt.rs`
//! (`iotsupport migrate`) and `legacy_migrate_to_s3.rs` (`iotsupport migrate-to-s3`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use iotsupport::config::{S3Config, Secret};
use iotsupport::storage::backend::ObjectStoreBackend;
use iotsupport::storage::{ObjectKey, ObjectStorage};
use sqlx::{Connection, PgConnection};

use crate::firmware_support::{sha256_hex, Build};
use crate::helpers::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_iotsupport");

/// The Python service's Alembic steps, in order.
pub const STEPS: [(&str, &str); 7] = [
    ("002", include_str!("../fixtures/legacy_schema/002.sql")),
    ("003", include_str!("../fixtures/legacy_schema/003.sql")),
    ("004", include_str!("../fixtures/legacy_schema/004.sql")),
    ("005", include_str!("../fixtures/legacy_schema/005.sql")),
    ("006", include_str!("../fixtures/legacy_schema/006.sql")),
    ("007", include_str!("../fixtures/legacy_schema/007.sql")),
    ("008", include_str!("../fixtures/legacy_schema/008.sql")),
];

/// Legacy core-dump files (name, content) of device `abcdefgh`; the database rows name them.
pub const DUMP_PARSED: (&str, &[u8]) = ("coredump_20250102T030405_000001Z.dmp", b"dump1");
pub const DUMP_PENDING: (&str, &[u8]) = ("coredump_20250103T030405_000002Z.dmp", b"dump-2");
/// A row of device `bcdefghi` whose file is not in COREDUMPS_DIR (until the test adds it).
pub const DUMP_MISSING: (&str, &[u8]) = ("coredump_20250104T030405_000003Z.dmp", b"dump--3");

/// A PostgreSQL database as the Python service left it, and the S3 server to migrate into.
pub struct Legacy {
    pub db_url: String,
    pub s3_endpoint: String,
    pub bucket: String,
}

impl Legacy {
    pub fn env(&self) -> Vec<(String, String)> {
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

    pub async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.db_url).await.unwrap()
    }

    pub fn s3_config(&self) -> S3Config {
        S3Config {
            endpoint_url: self.s3_endpoint.clone(),
            access_key_id: Some(Secret::new("test")),
            secret_access_key: Some(Secret::new("test")),
            bucket: self.bucket.clone(),
            region: "us-east-1".into(),
            request_timeout: std::time::Duration::from_secs(5),
        }
    }

    pub fn storage(&self) -> ObjectStoreBackend {
        ObjectStoreBackend::s3(&self.s3_config()).unwrap()
    }

    /// Every object in the bucket with its content (empty when the bucket does not exist).
    pub async fn objects(&self) -> BTreeMap<String, (Vec<u8>, DateTime<Utc>)> {
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
pub async fn legacy_database(test: &str, revision: &str) -> Option<Legacy> {
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

pub async fn exec(conn: &mut PgConnection, sql: &'static str) {
    sqlx::raw_sql(sql).execute(conn).await.unwrap();
}

pub async fn seed(conn: &mut PgConnection, revision: &str) {
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

pub fn run(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run iotsupport")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
pub fn assert_success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

pub async fn count(conn: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

pub async fn has_column(conn: &mut PgConnection, table: &str, column: &str) -> bool {
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
pub async fn serve(legacy: &Legacy, test: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut overrides = vec![
        ("DATABASE_URL", legacy.db_url.as_str()),
        ("S3_BUCKET_NAME", legacy.bucket.as_str()),
    ];
    overrides.extend_from_slice(extra);
    spawn_app_with(Stack::Production, test, &overrides, Default::default())
        .await
        .expect("services are there: the legacy database was built")
}

/// The Python service's files: ASSETS_DIR and COREDUMPS_DIR.
pub struct LegacyTree {
    pub _root: tempfile::TempDir,
    pub assets: PathBuf,
    pub coredumps: PathBuf,
    pub builds: Vec<Build>,
}

pub fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

pub fn legacy_tree() -> LegacyTree {
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
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, std::time::SystemTime)> {
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

pub fn tree_env(legacy: &Legacy, tree: &LegacyTree) -> Vec<(String, String)> {
    let mut env = legacy.env();
    env.push(("ASSETS_DIR".into(), tree.assets.display().to_string()));
    env.push(("COREDUMPS_DIR".into(), tree.coredumps.display().to_string()));
    env
}

pub fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    env.push((key.to_string(), value.to_string()));
    env
}

/// What must not change when migrate-to-s3 writes nothing.
pub async fn untouched(legacy: &Legacy, conn: &mut PgConnection) {
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
