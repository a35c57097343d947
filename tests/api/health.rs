//! Health, readiness, metrics, docs and the error envelope of unknown routes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use iotsupport::startup::BuildOptions;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::*;

#[tokio::test]
async fn readyz_is_ok_on_both_stacks() {
    for_each_stack("readyz_is_ok_on_both_stacks", &[], async |app| {
        let (status, body) = app.readyz().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(app.healthz().await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn readyz_is_503_while_migrations_are_pending_and_200_after_migrate() {
    TestApp::builder("readyz_pending_migrations")
        .env("MIGRATE_ON_START", "false")
        .for_each_stack(async |app| {
            let (status, body) = app.readyz().await;
            assert_eq!(status, 503);
            assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
            assert!(
                body["details"]["database"]
                    .as_str()
                    .unwrap()
                    .contains("pending migration"),
                "{body}"
            );
            assert_eq!(body["details"]["object_store"], "ok");

            iotsupport::db::migrate::run(app.db()).await.unwrap();
            assert_eq!(app.readyz_becomes(200).await.0, 200);
        })
        .await;
}

struct Moto(Child);

impl Moto {
    fn start(binary: &str, port: u16) -> Moto {
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        Moto(child)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until_answers(port: u16) {
    let client = reqwest::Client::new();
    let up = eventually(Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .is_ok()
        }
    })
    .await;
    assert!(up, "moto on port {port} did not start");
}

#[tokio::test]
async fn readyz_turns_503_when_the_s3_server_stops_and_200_when_it_returns() {
    let Some(_) = production_services("readyz_follows_s3") else {
        return;
    };
    let moto = std::env::var("IOTSUPPORT_TEST_MOTO_SERVER").expect("moto binary from test.sh");
    let port = free_port();
    let server = Moto::start(&moto, port);
    wait_until_answers(port).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let app = spawn_app_with(
        Stack::Production,
        "readyz_follows_s3",
        &[("S3_ENDPOINT_URL", &endpoint), ("S3_TIMEOUT_SECONDS", "2")],
        BuildOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(app.readyz().await.0, 200);

    drop(server);
    let (status, body) = app.readyz_becomes(503).await;
    assert_eq!(status, 503);
    assert_eq!(body["details"]["database"], "ok", "{body}");
    // In words of our own: the store's error (its endpoint, its answer) goes to the log only.
    let store = body["details"]["object_store"].as_str().unwrap_or_default();
    assert!(["unavailable", "timed out"].contains(&store), "{body}");

    // The S3 server comes back (moto keeps no data across restarts, so the bucket is restored
    // as a real server would still have it); the same service becomes ready without a restart.
    let _server = Moto::start(&moto, port);
    wait_until_answers(port).await;
    let iotsupport::config::StorageConfig::S3(s3) = &app.state.config.storage else {
        panic!("production stack uses S3");
    };
    iotsupport::storage::bucket::ensure_bucket(s3)
        .await
        .unwrap();
    assert_eq!(app.readyz_becomes(200).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_answer_with_the_envelope_and_the_callers_request_id() {
    let Some(app) = spawn_app(Stack::Embedded, "unknown_routes").await else {
        return;
    };
    let response = app
        .client
        .get(app.url("/api/nothing-here"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "RECORD_NOT_FOUND");
    assert_eq!(body["correlationId"], "req-123");
    assert_eq!(body["error"], "No route for /api/nothing-here");
    assert!(body["details"].is_object());

    // Without X-Request-ID one is generated and used for both the header and the envelope.
    let response = app
        .client
        .post(app.url("/health/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(body["correlationId"], header.as_str());
    assert!(uuid::Uuid::parse_str(&header).is_ok());
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let Some(app) = spawn_app(Stack::Embedded, "metrics").await else {
        return;
    };
    app.healthz().await;
    app.get("/no/such/7").await;
    let text = app.metrics().await;
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/health/healthz",status="200"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        !text.contains("/no/such/7"),
        "raw paths must not become labels"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_and_its_page_are_served() {
    let Some(app) = spawn_app(Stack::Embedded, "openapi").await else {
        return;
    };
    let doc = app.openapi().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/health/healthz", "/health/readyz", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    let page = app.get("/api/docs").await;
    assert_eq!(page.status(), 200);
    // Swagger UI comes from a CDN: its scripts run sandboxed, never as this origin.
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("sandbox") && !policy.contains("allow-same-origin"),
        "{policy}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let description = app.get("/api/docs/openapi.json").await;
    assert_eq!(description.headers()["access-control-allow-origin"], "*");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/api/docs/openapi.json"));
    app.stop().await;
}

/// Pooled PostgreSQL connections that the server ended while they sat idle are not handed out: a
/// connection idle for a while is checked (and replaced) before use, so queries after a database
/// restart or an administrator's `pg_terminate_backend` succeed at once. The pool alone, as
/// `Db::connect` makes it: a running service's background workers would use up the dead
/// connections before the test could.
#[tokio::test]
async fn pooled_connections_the_database_ended_while_idle_are_replaced() {
    let Some(TestConfig { config, dir: _dir }) =
        test_config(Stack::Production, "health_dead_pooled_connections", &[]).await
    else {
        return;
    };
    let db = iotsupport::db::Db::connect(&config).await.expect("pool");
    let iotsupport::db::Db::Postgres(pool) = &db else {
        unreachable!("the production stack runs on PostgreSQL");
    };
    let queries = || {
        futures::future::join_all((0..8).map(|_| async {
            let mut tx = pool.begin().await?;
            let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(one)
        }))
    };
    for result in queries().await {
        assert_eq!(result.expect("a query before"), 1);
    }
    assert!(pool.num_idle() > 1, "idle connections: {}", pool.num_idle());
    let mut admin = sqlx::PgConnection::connect(config.database_url.expose())
        .await
        .expect("a connection of our own");
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend') AS ended",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(ended > 1, "backends ended: {ended}");
    // Longer than the idle time after which a pooled connection is checked before use.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for result in queries().await {
        assert_eq!(result.expect("a query after the backends were ended"), 1);
    }
}

/// A background worker that ends while the service runs (a panic, or one that gave up) stops
/// the process with an error naming it, after the usual graceful stop, instead of leaving a
/// process that answers and looks ready but no longer does that worker's job.
#[tokio::test]
async fn a_worker_that_ends_early_stops_the_process_with_an_error_naming_it() {
    for (name, panics) in [("quits", false), ("panics", true)] {
        let Some(app) = TestApp::builder(&format!("worker_ends_early_{name}"))
            .options(move || BuildOptions {
                extra_workers: vec![(
                    name,
                    Box::new(move |_shutdown| {
                        Box::pin(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            assert!(!panics, "a deliberate panic");
                        })
                    }),
                )],
                ..Default::default()
            })
            .spawn(Stack::Embedded)
            .await
        else {
            return;
        };
        assert_eq!(app.healthz().await.0, 200);
        let (client, health) = (app.client.clone(), app.url("/health/healthz"));
        let shutdown = app.shutdown.clone();
        let stopped = tokio::time::timeout(Duration::from_secs(30), app.server)
            .await
            .expect("the process did not stop")
            .unwrap();
        let error = stopped.expect_err("a worker ended early, yet the process stopped cleanly");
        let how = if panics { "panicked" } else { "stopped" };
        assert!(
            error
                .to_string()
                .contains(&format!("the {name} worker {how}")),
            "{error}"
        );
        assert!(
            shutdown.is_cancelled(),
            "the other workers were not told to stop"
        );
        let after = client.get(health).send().await;
        assert!(after.is_err(), "still answering: {after:?}");
    }
}
