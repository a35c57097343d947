//! Test rig: every test gets its own database (a fresh PostgreSQL database or SQLite file) and its
//! own bucket (on the S3 server `scripts/test.sh` started) or object directory, so tests run in
//! parallel without seeing each other's data.
//!
//! A test that must hold on both stacks is written once and run by [`for_each_stack`] (or
//! [`TestApp::builder`] when it needs settings or build options); the requests themselves are
//! methods of [`TestApp`] (`client.rs`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

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
    /// The services it runs against.
    pub stack: Stack,
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
    Some(start_app(stack, config, dir, options).await)
}

/// Two service processes sharing one database and one object store, as in a scaled-out
/// deployment; each has its own in-process caches and fault injector. `None` when skipped.
pub async fn spawn_twins(
    stack: Stack,
    test: &str,
    overrides: &[(&str, &str)],
) -> Option<(TestApp, TestApp)> {
    let TestConfig { config, dir } = test_config(stack, test, overrides).await?;
    let first = start_app(stack, config.clone(), dir, BuildOptions::default()).await;
    let second_dir = TempDir::new().expect("temp dir");
    // A process of its own draws its own MQTT client id: with the first's, the broker would
    // hand the id back and forth between the two, dropping each connection in turn.
    let mut config = config;
    if let Some(mqtt) = &mut config.mqtt {
        mqtt.client_id =
            iotsupport::config::unique_client_id(iotsupport::config::DEFAULT_MQTT_CLIENT_ID);
    }
    let second = start_app(stack, config, second_dir, BuildOptions::default()).await;
    Some((first, second))
}

/// Sends the service's warnings (or `IOTSUPPORT_TEST_LOG`, an env filter) to the test harness,
/// which shows them with a failing test's output and hides them otherwise.
fn capture_service_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("IOTSUPPORT_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

pub async fn start_app(
    stack: Stack,
    config: Config,
    dir: TempDir,
    mut options: BuildOptions,
) -> TestApp {
    capture_service_logs();
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
        stack,
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

/// Runs `body` against a fresh app on each stack in turn ([`ALL_STACKS`]): the embedded one
/// always, the production one when its services are there (otherwise a `SKIP` line, as
/// [`spawn_app`] prints). Each app is stopped after its run. When `body` panics, the test fails
/// with a message naming the stack, after the original panic message and location.
///
/// ```ignore
/// for_each_stack("models_crud", &[], async |app| {
///     let (status, body) = app.create_model("sensor", "Sensor", None).await;
///     assert_eq!(status, 201, "{body}");
/// })
/// .await;
/// ```
pub async fn for_each_stack(
    test: &str,
    overrides: &[(&str, &str)],
    body: impl AsyncFnMut(&TestApp),
) {
    TestApp::builder(test)
        .overrides(overrides)
        .for_each_stack(body)
        .await;
}

impl TestApp {
    /// How to start the apps of test `test` (the name goes into SKIP lines and failure messages).
    pub fn builder<'a>(test: &str) -> TestAppBuilder<'a> {
        TestAppBuilder {
            test: test.to_string(),
            overrides: Vec::new(),
            options: None,
            without_default_job_handlers: false,
        }
    }
}

/// The settings of the apps one test starts: environment overrides and [`BuildOptions`].
/// `BuildOptions` cannot be cloned (routers, stores, handlers), so they are given as a function
/// called once per app.
pub struct TestAppBuilder<'a> {
    test: String,
    overrides: Vec<(String, String)>,
    options: Option<Box<dyn Fn() -> BuildOptions + 'a>>,
    without_default_job_handlers: bool,
}

impl<'a> TestAppBuilder<'a> {
    /// Sets one environment variable of the configuration (applied after the stack's own).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.overrides.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets several environment variables, as [`TestAppBuilder::env`] does.
    pub fn overrides(mut self, overrides: &[(&str, &str)]) -> Self {
        for (key, value) in overrides {
            self = self.env(key, value);
        }
        self
    }

    /// Builds each app with the options `options()` returns (extra routes, job handlers, …).
    pub fn options(mut self, options: impl Fn() -> BuildOptions + 'a) -> Self {
        self.options = Some(Box::new(options));
        self
    }

    /// Leaves jobs queued: the app's workers run no default handler (no core dump parsing), so a
    /// test runs them itself when it wants to.
    pub fn without_default_job_handlers(mut self) -> Self {
        self.without_default_job_handlers = true;
        self
    }

    /// Starts one app on `stack`; `None` (with a SKIP line) when its services are not there.
    pub async fn spawn(&self, stack: Stack) -> Option<TestApp> {
        let mut options = self.options.as_ref().map(|f| f()).unwrap_or_default();
        options.without_default_job_handlers |= self.without_default_job_handlers;
        let overrides: Vec<(&str, &str)> = self
            .overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        spawn_app_with(stack, &self.test, &overrides, options).await
    }

    /// [`for_each_stack`] with these settings.
    pub async fn for_each_stack(&self, mut body: impl AsyncFnMut(&TestApp)) {
        for stack in ALL_STACKS {
            let Some(app) = self.spawn(stack).await else {
                continue;
            };
            // The body only borrows the app; after a panic nothing of it is used again but the
            // shutdown token.
            let outcome = AssertUnwindSafe(body(&app)).catch_unwind().await;
            if let Err(panic) = outcome {
                app.shutdown.cancel();
                panic!(
                    "{}: failed on the {stack:?} stack: {}",
                    self.test,
                    panic_message(panic.as_ref())
                );
            }
            app.stop().await;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(a panic without a message)"
    }
}

#[tokio::test]
#[should_panic(expected = "stack_named: failed on the Embedded stack: planted failure")]
async fn a_failure_in_for_each_stack_names_the_stack() {
    for_each_stack("stack_named", &[], async |app| {
        assert_eq!(app.stack, Stack::Embedded);
        panic!("planted failure");
    })
    .await;
}

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
/// (`Null` when the answer is not JSON). Unauthenticated; the endpoint methods (`client.rs`) are
/// the usual way.
#[allow(dead_code)] // Kept for the tests that import it.
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

/// Backends of this database waiting for a lock.
pub async fn waiting_for_a_lock(app: &TestApp) -> i64 {
    match app.db() {
        iotsupport::db::Db::Postgres(pool) => sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap(),
        iotsupport::db::Db::Sqlite(_) => 0,
    }
}

/// Makes every pending deletion due now (instead of waiting out the outbox's backoff).
pub async fn make_deletions_due(app: &TestApp) {
    let now = iotsupport::db::now();
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "UPDATE object_deletions SET next_attempt_at = $1"
    )
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
}

/// Whether, within 20 s, some session of the test's database waits for a PostgreSQL lock matching
/// `filter` (a condition on `pg_locks l` and the waiting session's `pg_stat_activity a`).
pub async fn a_lock_is_awaited(app: &TestApp, filter: &str) -> bool {
    let sql = format!(
        "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE NOT l.granted AND a.datname = current_database() AND {filter}"
    );
    eventually(Duration::from_secs(20), || async {
        let waiting: i64 = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            sqlx::AssertSqlSafe(sql.clone())
        )
        .fetch_one(p)
        .await)
        .unwrap();
        waiting > 0
    })
    .await
}
