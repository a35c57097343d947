//! Test rig: every test gets its own database (a fresh PostgreSQL database or SQLite file) and its
//! own bucket (on the S3 server `scripts/test.sh` started) or object directory, so tests run in
//! parallel without seeing each other's data.

use std::sync::Arc;
use std::time::Duration;

use iotsupport::config::{Config, Env};
use iotsupport::db::Db;
use iotsupport::startup::{open_storage, Application, BuildOptions};
use iotsupport::state::AppState;
use iotsupport::storage::faulty::FaultyStorage;
use iotsupport::storage::Storage;
use sqlx::Connection;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Which real services a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// PostgreSQL and the S3 server started by `scripts/test.sh`.
    Production,
    /// The zero-setup default: SQLite file and local object directory.
    Embedded,
}

fn services_required() -> bool {
    std::env::var("IOTSUPPORT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The admin URL of the test PostgreSQL server and the S3 endpoint, or `None` (with a SKIP line)
/// when the test runs outside `scripts/test.sh`.
pub fn production_services(test: &str) -> Option<(String, String)> {
    let db = std::env::var("IOTSUPPORT_TEST_DATABASE_URL").ok();
    let s3 = std::env::var("IOTSUPPORT_TEST_S3_ENDPOINT").ok();
    match (db, s3) {
        (Some(db), Some(s3)) => Some((db, s3)),
        _ if services_required() => {
            panic!("{test}: IOTSUPPORT_TEST_DATABASE_URL / IOTSUPPORT_TEST_S3_ENDPOINT not set")
        }
        _ => {
            eprintln!("SKIP {test}: no PostgreSQL/S3 configured; run scripts/test.sh");
            None
        }
    }
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database(admin_url: &str) -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .expect("database URL has a path")
        .0;
    format!("{base}/{name}")
}

pub fn unique_bucket() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

/// A configuration for one test, plus what must outlive it.
pub struct TestConfig {
    pub config: Config,
    pub dir: TempDir,
}

/// Builds the configuration for `stack`, with `overrides` applied last. `None` when skipped.
pub async fn test_config(
    stack: Stack,
    test: &str,
    overrides: &[(&str, &str)],
) -> Option<TestConfig> {
    let dir = TempDir::new().expect("temp dir");
    let mut pairs: Vec<(String, String)> = vec![
        ("PORT".into(), "0".into()),
        ("LOG_FORMAT".into(), "text".into()),
        ("WORKER_POLL_SECONDS".into(), "0.05".into()),
        ("MIGRATE_ON_START".into(), "true".into()),
    ];
    match stack {
        Stack::Production => {
            let (db, s3) = production_services(test)?;
            pairs.push(("DATABASE_URL".into(), fresh_postgres_database(&db).await));
            pairs.push(("S3_ENDPOINT_URL".into(), s3));
            pairs.push(("S3_BUCKET_NAME".into(), unique_bucket()));
            pairs.push(("S3_ACCESS_KEY_ID".into(), "test".into()));
            pairs.push(("S3_SECRET_ACCESS_KEY".into(), "test".into()));
            pairs.push(("S3_TIMEOUT_SECONDS".into(), "5".into()));
        }
        Stack::Embedded => {
            let db = dir.path().join("iotsupport.db");
            pairs.push(("DATABASE_URL".into(), format!("sqlite://{}", db.display())));
            pairs.push((
                "STORAGE_DIR".into(),
                dir.path().join("objects").display().to_string(),
            ));
        }
    }
    for (k, v) in overrides {
        pairs.retain(|(key, _)| key != k);
        pairs.push((k.to_string(), v.to_string()));
    }
    let config = Config::from(&Env::from_pairs(pairs)).expect("valid test configuration");
    Some(TestConfig { config, dir })
}

/// A running service on a random port, with a fault-injecting store in front of the real one.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub faults: FaultyStorage,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    pub _dir: TempDir,
}

impl TestApp {
    pub fn db(&self) -> &Db {
        &self.state.db
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Stops the server and workers and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.server).await;
    }
}

pub async fn spawn_app(stack: Stack, test: &str) -> Option<TestApp> {
    spawn_app_with(stack, test, &[], BuildOptions::default()).await
}

pub async fn spawn_app_with(
    stack: Stack,
    test: &str,
    overrides: &[(&str, &str)],
    options: BuildOptions,
) -> Option<TestApp> {
    let TestConfig { config, dir } = test_config(stack, test, overrides).await?;
    Some(start_app(config, dir, options).await)
}

/// Two service processes sharing one database and one object store, as in a scaled-out
/// deployment; each has its own in-process caches and fault injector. `None` when skipped.
pub async fn spawn_twins(
    stack: Stack,
    test: &str,
    overrides: &[(&str, &str)],
) -> Option<(TestApp, TestApp)> {
    let TestConfig { config, dir } = test_config(stack, test, overrides).await?;
    let first = start_app(config.clone(), dir, BuildOptions::default()).await;
    let second_dir = TempDir::new().expect("temp dir");
    let second = start_app(config, second_dir, BuildOptions::default()).await;
    Some((first, second))
}

async fn start_app(config: Config, dir: TempDir, mut options: BuildOptions) -> TestApp {
    let real: Storage = match options.storage.take() {
        Some(s) => s,
        None => open_storage(&config).await.expect("open object store"),
    };
    let faults = FaultyStorage::new(real);
    options.storage = Some(Arc::new(faults.clone()));
    let app = Application::build_with(config, options)
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        faults,
        shutdown,
        server,
        _dir: dir,
    }
}

/// Both stacks, for tests that must hold on each database backend.
pub const ALL_STACKS: [Stack; 2] = [Stack::Embedded, Stack::Production];

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sends a request (with a JSON body when given) and returns the status and the JSON answer
/// (`Null` when the answer is not JSON).
pub async fn call(
    app: &TestApp,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}
