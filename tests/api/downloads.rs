//! The shared download path: streamed bodies, HEAD, single ranges fetched as ranged GETs from the
//! store, 416, ETag / If-None-Match / If-Range, and a store outage as 503.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method};
use iotsupport::http::download::{respond, Download};
use iotsupport::http::error::ApiError;
use iotsupport::startup::BuildOptions;
use iotsupport::state::AppState;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::{ByteRange, ObjectKey, Operation};

use crate::helpers::*;

const ETAG: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

async fn serve(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let download = Download {
        key: ObjectKey::from_segments(&["probe", &name])?,
        etag: Some(ETAG.to_string()),
        content_type: "application/octet-stream",
        filename: format!("{name}.bin"),
        missing: None,
    };
    respond(&state.storage, download, &method, &headers).await
}

/// Apps with the probe download route.
fn with_probe(test: &str) -> TestAppBuilder<'static> {
    TestApp::builder(test).options(|| BuildOptions {
        extra_routes: Some(Router::new().route("/test/download/{name}", get(serve))),
        ..Default::default()
    })
}

/// Stores the object `/test/download/image` serves; returns its content.
async fn put_image(app: &TestApp) -> Bytes {
    let data: Bytes = (0..100_000u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    app.state
        .storage
        .put(&ObjectKey::parse("probe/image").unwrap(), data.clone())
        .await
        .unwrap();
    data
}

async fn spawn(stack: Stack, test: &str) -> Option<(TestApp, Bytes)> {
    let app = with_probe(test).spawn(stack).await?;
    let data = put_image(&app).await;
    Some((app, data))
}

#[tokio::test]
async fn whole_objects_stream_with_their_metadata_and_head_matches() {
    with_probe("download_whole")
        .for_each_stack(async |app| {
            let data = put_image(app).await;
            let response = app.get("/test/download/image").await;
            assert_eq!(response.status(), 200);
            let h = response.headers().clone();
            assert_eq!(h["content-length"], "100000");
            assert_eq!(h["content-disposition"], "attachment; filename=image.bin");
            assert_eq!(h["etag"], format!("\"{ETAG}\"").as_str());
            assert_eq!(h["accept-ranges"], "bytes");
            assert_eq!(response.bytes().await.unwrap(), data);

            let head = app
                .client
                .head(app.url("/test/download/image"))
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), 200);
            assert_eq!(head.headers()["content-length"], "100000");
            assert_eq!(app.faults.gets().len(), 1, "HEAD must not GET the object");
        })
        .await;
}

#[tokio::test]
async fn a_range_is_fetched_from_the_store_as_a_range() {
    with_probe("download_range")
        .for_each_stack(async |app| {
            let data = put_image(app).await;
            for (range, start, end) in [
                ("bytes=1000-1999", 1000usize, 2000usize),
                ("bytes=99990-", 99_990, 100_000),
                ("bytes=-10", 99_990, 100_000),
                ("bytes=99000-200000", 99_000, 100_000),
            ] {
                let response = app
                    .client
                    .get(app.url("/test/download/image"))
                    .header("range", range)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 206, "{range}");
                assert_eq!(
                    response.headers()["content-range"],
                    format!("bytes {start}-{}/100000", end - 1).as_str(),
                    "{range}"
                );
                assert_eq!(
                    response.headers()["content-length"],
                    (end - start).to_string().as_str()
                );
                assert_eq!(
                    response.bytes().await.unwrap(),
                    data.slice(start..end),
                    "{range}"
                );
            }
            let gets = app.faults.gets();
            assert_eq!(
                gets[0].1,
                Some(ByteRange::Bounded {
                    start: 1000,
                    end: 2000
                }),
                "{gets:?}"
            );
            assert!(
                gets.iter().all(|(_, r)| r.is_some()),
                "a ranged request read the whole object: {gets:?}"
            );

            let response = app
                .client
                .get(app.url("/test/download/image"))
                .header("range", "bytes=100000-")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 416);
            assert_eq!(response.headers()["content-range"], "bytes */100000");
        })
        .await;
}

#[tokio::test]
async fn etags_answer_304_and_guard_resumed_ranges() {
    let Some((app, data)) = spawn(Stack::Production, "download_etag").await else {
        return;
    };
    let response = app
        .client
        .get(app.url("/test/download/image"))
        .header("if-none-match", format!("\"{ETAG}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    assert!(app.faults.gets().is_empty(), "304 must not touch the store");

    let response = app
        .client
        .get(app.url("/test/download/image"))
        .header("range", "bytes=0-9")
        .header("if-range", format!("\"{ETAG}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    let response = app
        .client
        .get(app.url("/test/download/image"))
        .header("range", "bytes=0-9")
        .header("if-range", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "changed content: send it all");
    assert_eq!(response.bytes().await.unwrap(), data);
    // A validator with bytes that are not text (RFC 9110 obs-text) cannot match: all of it.
    let response = app
        .client
        .get(app.url("/test/download/image"))
        .header("range", "bytes=0-9")
        .header(
            "if-range",
            reqwest::header::HeaderValue::from_bytes(b"\"\xe9\"").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a validator that is not text");
    assert_eq!(response.bytes().await.unwrap(), data);
    app.stop().await;
}

#[tokio::test]
async fn a_store_outage_is_503_and_a_mid_stream_failure_cuts_the_body() {
    let Some((app, _)) = spawn(Stack::Production, "download_outage").await else {
        return;
    };
    app.faults.inject(Fault::always(Operation::Get).times(1));
    let response = app.get("/test/download/image").await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["code"],
        "SERVICE_UNAVAILABLE"
    );

    app.faults
        .inject(Fault::always(Operation::Get).after_bytes(10));
    // The store fails after the response has started: the client must see a broken transfer
    // (the connection is cut before or during the body), never a short body that looks complete.
    match app.client.get(app.url("/test/download/image")).send().await {
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
        Ok(response) => {
            assert_eq!(response.status(), 200);
            assert!(
                response.bytes().await.is_err(),
                "a truncated body looked complete"
            );
        }
    }
    app.stop().await;
}
