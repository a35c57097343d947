//! The admin and device identity extractors, through probe routes that require them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use iotsupport::fleet::hash_device_secret;
use iotsupport::http::auth::{AdminEditor, AdminReader, DeviceCaller, PipelineCaller};
use iotsupport::startup::BuildOptions;
use iotsupport::state::AppState;
use serde_json::{json, Value};

use crate::helpers::*;

const TOKEN: &str = "admin-token-for-tests-0123456789";

fn probe_routes() -> Router<AppState> {
    Router::new()
        .route("/test/read", get(|AdminReader(who): AdminReader| async move { Json(json!({ "subject": who.subject })) }))
        .route("/test/write", get(|_: AdminEditor| async { "ok" }))
        .route("/test/pipeline", get(|_: PipelineCaller| async { "ok" }))
        .route(
            "/test/device",
            get(|device: DeviceCaller, State(_): State<AppState>| async move { Json(json!({ "key": device.key, "id": device.id })) }),
        )
}

/// Apps with the probe routes.
fn with_probes(test: &str) -> TestAppBuilder<'static> {
    TestApp::builder(test).options(|| BuildOptions {
        extra_routes: Some(probe_routes()),
        ..Default::default()
    })
}

async fn spawn(stack: Stack, test: &str, overrides: &[(&str, &str)]) -> Option<TestApp> {
    with_probes(test).overrides(overrides).spawn(stack).await
}

async fn status(app: &TestApp, path: &str, auth: Option<&str>) -> (u16, Value) {
    let mut request = app.client.get(app.url(path));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn admin_routes_require_the_admin_token_when_one_is_set() {
    let Some(app) = spawn(Stack::Embedded, "admin_token", &[("ADMIN_TOKEN", TOKEN)]).await else {
        return;
    };
    let (code, body) = status(&app, "/test/read", None).await;
    assert_eq!(code, 401);
    assert_eq!(body["code"], "AUTHENTICATION_REQUIRED");
    let (code, body) = status(&app, "/test/write", Some("Bearer wrong-token-wrong-token")).await;
    assert_eq!(code, 401);
    assert_eq!(body["error"], "Invalid credentials");
    let (code, _) = status(&app, "/test/read", Some("Basic Zm9vOmJhcg==")).await;
    assert_eq!(code, 401);
    let bearer = format!("Bearer {TOKEN}");
    let (code, body) = status(&app, "/test/read", Some(&bearer)).await;
    assert_eq!(code, 200);
    assert_eq!(body["subject"], "admin");
    assert_eq!(status(&app, "/test/write", Some(&bearer)).await.0, 200);
    assert_eq!(status(&app, "/test/pipeline", Some(&bearer)).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn without_admin_authentication_the_admin_api_is_open() {
    let Some(app) = spawn(Stack::Embedded, "admin_open", &[]).await else {
        return;
    };
    assert_eq!(status(&app, "/test/write", None).await.0, 200);
    assert_eq!(status(&app, "/test/read", None).await.1["subject"], "admin");
    app.stop().await;
}

async fn insert_device(app: &TestApp, model: &str, key: &str, secret: &str) -> i64 {
    let now = iotsupport::db::now();
    let mut tx = app.db().begin().await.unwrap();
    let model_id: i64 = iotsupport::on_conn!(&mut tx, |c| sqlx::query_scalar(
        "INSERT INTO device_models (code, name, created_at, updated_at) VALUES ($1, $1, $2, $2)
         ON CONFLICT (code) DO UPDATE SET name = excluded.name RETURNING id"
    )
    .bind(model)
    .bind(now)
    .fetch_one(c)
    .await)
    .unwrap();
    let id: i64 = iotsupport::on_conn!(&mut tx, |c| {
        sqlx::query_scalar(
        "INSERT INTO devices (key, device_model_id, config, secret_hash, created_at, updated_at)
         VALUES ($1, $2, '{}', $3, $4, $4) RETURNING id"
    )
    .bind(key)
    .bind(model_id)
    .bind(hash_device_secret(secret))
    .bind(now)
    .fetch_one(c)
    .await
    })
    .unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn devices_authenticate_as_themselves_with_key_and_secret() {
    with_probes("device_auth")
        .env("ADMIN_TOKEN", TOKEN)
        .for_each_stack(async |app| {
            let id = insert_device(app, "sensor", "abcd2345", "secret-one").await;
            insert_device(app, "sensor", "zzzz7777", "secret-two").await;

            let (code, body) =
                status(app, "/test/device", Some("Bearer abcd2345.secret-one")).await;
            assert_eq!(code, 200, "{body}");
            assert_eq!(body["key"], "abcd2345");
            assert_eq!(body["id"], id);

            for bad in [
                "Bearer abcd2345.secret-two", // another device's secret
                "Bearer abcd2345.",
                "Bearer abcd2345",
                "Bearer nope0000.secret-one",
                "Bearer abcd2345x.secret-one",
            ] {
                let (code, body) = status(app, "/test/device", Some(bad)).await;
                assert_eq!(code, 401, "{bad}");
                assert_eq!(body["code"], "AUTHENTICATION_REQUIRED");
            }
            assert_eq!(status(app, "/test/device", None).await.0, 401);
            // The admin token is not a device credential, and ?device_key= is off by default.
            assert_eq!(
                status(app, "/test/device", Some(&format!("Bearer {TOKEN}")))
                    .await
                    .0,
                401
            );
            assert_eq!(
                status(app, "/test/device?device_key=abcd2345", None)
                    .await
                    .0,
                401
            );
        })
        .await;
}

#[tokio::test]
async fn the_development_device_key_mode_works_only_when_enabled() {
    let Some(app) = spawn(
        Stack::Embedded,
        "device_key_mode",
        &[("IOT_DEVICE_KEY_AUTH", "true")],
    )
    .await
    else {
        return;
    };
    insert_device(&app, "sensor", "abcd2345", "secret-one").await;
    let (code, body) = status(&app, "/test/device?device_key=abcd2345", None).await;
    assert_eq!(code, 200);
    assert_eq!(body["key"], "abcd2345");
    assert_eq!(
        status(&app, "/test/device?device_key=unknown1", None)
            .await
            .0,
        401
    );
    app.stop().await;
}

/// POST /api/device-models with `auth` and `headers`; the status and the model codes stored after.
async fn create_model(
    app: &TestApp,
    code: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>) {
    let mut request = app
        .client
        .post(app.url("/api/device-models"))
        .json(&json!({"code": code, "name": code}));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let status = request.send().await.unwrap().status().as_u16();
    let codes = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT code FROM device_models ORDER BY code"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    (status, codes)
}

/// What a browser sends with a form or fetch of a page on another site.
const FROM_ANOTHER_SITE: [&[(&str, &str)]; 4] = [
    &[
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ],
    &[("sec-fetch-site", "same-site")],
    // Browsers without Fetch Metadata: the Origin (or Referer) names another host.
    &[("origin", "http://evil.example")],
    &[("origin", "null")],
];

#[tokio::test]
async fn writes_from_another_sites_pages_are_refused_in_every_mode() {
    let bearer = format!("Bearer {TOKEN}");
    for (mode, overrides, auth) in [
        ("open", vec![], None),
        ("token", vec![("ADMIN_TOKEN", TOKEN)], Some(bearer.as_str())),
    ] {
        let Some(app) = spawn(Stack::Embedded, &format!("cross_site_{mode}"), &overrides).await
        else {
            return;
        };
        for headers in FROM_ANOTHER_SITE {
            let (status, codes) = create_model(&app, "forged", auth, headers).await;
            assert_eq!(status, 403, "{mode} {headers:?}");
            assert!(codes.is_empty(), "{mode} {headers:?}: {codes:?}");
        }
        // Our own pages, a typed address, and clients that are not browsers (curl, CI).
        let own: [&[(&str, &str)]; 3] = [
            &[
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://evil.example"),
            ],
            &[("origin", &app.url(""))],
            &[],
        ];
        for (i, headers) in own.into_iter().enumerate() {
            let code = format!("own{i}");
            let (status, codes) = create_model(&app, &code, auth, headers).await;
            assert_eq!(status, 201, "{mode} {headers:?}");
            assert!(codes.contains(&code), "{mode} {headers:?}: {codes:?}");
        }
        // Reads from another site are answered as before (a browser keeps them from the page).
        let read = app
            .client
            .get(app.url("/api/device-models"))
            .header("sec-fetch-site", "cross-site")
            .header("authorization", auth.unwrap_or(""))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "{mode}");
        app.stop().await;
    }
}

#[tokio::test]
async fn open_mode_answers_only_requests_addressed_to_this_machine() {
    let Some(app) = spawn(Stack::Embedded, "open_host", &[]).await else {
        return;
    };
    let port = app
        .url("")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let with_host = |host: String| {
        app.client
            .get(app.url("/test/read"))
            .header("host", host)
            .send()
    };
    // A name its owner pointed at 127.0.0.1 (DNS rebinding): the page would be same-origin.
    let rebound = with_host(format!("evil.example:{port}")).await.unwrap();
    assert_eq!(rebound.status(), 403);
    let body: Value = rebound.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("ADMIN_TOKEN"),
        "{body}"
    );
    let (status, codes) = create_model(
        &app,
        "rebound",
        None,
        &[("host", &format!("evil.example:{port}"))],
    )
    .await;
    assert_eq!(status, 403);
    assert!(codes.is_empty(), "{codes:?}");
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(
            with_host(host.clone()).await.unwrap().status(),
            200,
            "{host}"
        );
    }
    app.stop().await;

    // A proxy in front that passes its own Host on: its name is allowed. Others still are not,
    // also with ALLOW_UNAUTHENTICATED (the server is still on loopback).
    let Some(app) = spawn(
        Stack::Embedded,
        "open_host_allowed",
        &[
            ("ALLOWED_HOSTS", "iot.lan, other.lan"),
            ("ALLOW_UNAUTHENTICATED", "true"),
        ],
    )
    .await
    else {
        return;
    };
    let status = |host: &'static str| {
        let request = app.client.get(app.url("/test/read")).header("host", host);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("iot.lan:3101").await, 200);
    assert_eq!(status("evil.example:3101").await, 403);
    app.stop().await;
}
