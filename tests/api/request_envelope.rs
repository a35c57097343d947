//! What every request gets whatever it sends: a 4xx is always the JSON envelope (a path parameter
//! or a query that does not parse included), the envelope echoes a bounded amount of what the
//! request said (its path, its method), and `X-Request-ID` is kept only when it is a short,
//! printable id — otherwise one is generated, echoed and used as the `correlationId`.

use http::Method;
use serde_json::Value;

use crate::client::status_and_json;
use crate::fleet::model_with_device;
use crate::helpers::*;
use crate::openapi::routed;

/// The longest message an envelope may carry when the request was long: the text around the
/// echoed part plus the echoed part's bound.
const ECHO_BOUND: usize = 400;

/// Asserts a 400 `VALIDATION_FAILED` envelope served as JSON; `what` names the request.
async fn assert_validation_envelope(response: reqwest::Response, what: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(content_type, "application/json", "{what}: {body}");
    assert_eq!(body["code"], "VALIDATION_FAILED", "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(body["details"].is_object(), "{what}: {body}");
    assert!(
        !body["correlationId"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{what}: {body}"
    );
    body
}

/// A concrete path for a route template: integer parameters get `bad`, the others a valid value.
fn path_with(template: &str, bad: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{id}" | "{cid}" => bad,
            "{version}" => "1.0.0",
            "{artifact}" => "firmware.bin",
            "{code}" => "sensor",
            other => {
                assert!(!other.starts_with('{'), "teach path_with about {other}");
                other
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_routed_path_with_a_non_integer_id_answers_the_json_envelope() {
    let Some(app) = spawn_app(Stack::Embedded, "path_rejections").await else {
        return;
    };
    let with_ids: Vec<_> = routed()
        .into_iter()
        .filter(|(_, path)| path.contains("{id}") || path.contains("{cid}"))
        .collect();
    assert!(
        with_ids.len() > 20,
        "routes read from src/http: {with_ids:?}"
    );
    for (method, template) in with_ids {
        for bad in ["abc", "1.5", "99999999999999999999"] {
            let path = path_with(&template, bad);
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let response = app
                .admin_request(method.clone(), app.url(&path))
                .send()
                .await
                .unwrap();
            let what = format!("{method} {path}");
            let body = assert_validation_envelope(response, &what).await;
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("Invalid path parameter"),
                "{what}: {body}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn every_query_with_a_bad_value_answers_the_json_envelope() {
    let Some(app) = spawn_app(Stack::Embedded, "query_rejections").await else {
        return;
    };
    let device = model_with_device(&app, "sensor").await;
    let admin_queries = [
        "/api/devices?model_id=abc".to_string(),
        "/api/devices?model_id=1&model_id=2".to_string(),
        format!(
            "/api/devices/{}/provisioning?partition_size=1&partition_size=2",
            device.id
        ),
        "/api/sse/stream?request_id=a&request_id=b".to_string(),
        "/api/auth/login?redirect=%2Fa&redirect=%2Fb".to_string(),
    ];
    for path in admin_queries {
        let response = app
            .admin_request(Method::GET, app.url(&path))
            .send()
            .await
            .unwrap();
        let body = assert_validation_envelope(response, &path).await;
        assert!(
            body["error"].as_str().unwrap().starts_with("Invalid query"),
            "{path}: {body}"
        );
    }
    let path = "/api/iot/coredump?chip=esp32&chip=esp32s3&firmware_version=1.0";
    let response = app
        .device_request(Method::POST, path, &device.credential)
        .body(vec![1u8; 16])
        .send()
        .await
        .unwrap();
    assert_validation_envelope(response, path).await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_echo_a_bounded_part_of_the_request() {
    let Some(app) = spawn_app(Stack::Embedded, "bounded_echo").await else {
        return;
    };
    // Just under what a URI may hold (the http crate refuses 64 KiB and more with 414).
    let long_path = format!("/api/{}", "a".repeat(60_000));
    let (status, body) = status_and_json(app.get(&long_path).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "RECORD_NOT_FOUND");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("No route for /api/aaaa"), "{error}");
    assert!(error.len() <= ECHO_BOUND, "{} bytes echoed", error.len());

    let long_method = Method::from_bytes("X".repeat(10_000).as_bytes()).unwrap();
    let response = app
        .client
        .request(long_method, app.url("/health/healthz"))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 405, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("Method XXXX"), "{error}");
    assert!(error.len() <= ECHO_BOUND, "{} bytes echoed", error.len());

    // Short paths are echoed whole, as before.
    let (_, body) = status_and_json(app.get("/api/nothing-here").await).await;
    assert_eq!(body["error"], "No route for /api/nothing-here");
    app.stop().await;
}

/// Sends `GET /api/nothing-here` with `X-Request-ID: id`; returns the echoed header and the
/// envelope's `correlationId`.
async fn echoed_request_id(app: &TestApp, id: &[u8]) -> (String, String) {
    let response = app
        .client
        .get(app.url("/api/nothing-here"))
        .header(
            "x-request-id",
            http::HeaderValue::from_bytes(id).expect("a header value"),
        )
        .send()
        .await
        .unwrap();
    let header = response.headers()["x-request-id"]
        .to_str()
        .expect("an ASCII request id")
        .to_string();
    let body: Value = response.json().await.unwrap();
    (header, body["correlationId"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_request_id_is_kept_only_when_short_and_printable() {
    let Some(app) = spawn_app(Stack::Embedded, "request_id_bounds").await else {
        return;
    };
    for kept in [
        "req-123".to_string(),
        "a".repeat(128),
        "0f8fad5b-d9cb-469f-a165-70867728950e".to_string(),
        "!~#:/=".to_string(),
    ] {
        let (header, correlation) = echoed_request_id(&app, kept.as_bytes()).await;
        assert_eq!(header, kept);
        assert_eq!(correlation, kept);
    }
    let too_long = "a".repeat(129);
    let huge = "b".repeat(100_000);
    for replaced in [
        too_long.as_bytes(),
        huge.as_bytes(),
        b"has space".as_slice(),
        b"tab\there".as_slice(),
        "caf\u{e9}".as_bytes(),
        b"".as_slice(),
    ] {
        let (header, correlation) = echoed_request_id(&app, replaced).await;
        assert!(
            uuid::Uuid::parse_str(&header).is_ok(),
            "{:?} was replaced by a generated id, not {header:?}",
            String::from_utf8_lossy(&replaced[..replaced.len().min(40)])
        );
        assert_eq!(correlation, header, "the envelope names the generated id");
    }
    app.stop().await;
}
