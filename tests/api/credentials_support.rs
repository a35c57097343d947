//! Helpers of the device-credential tests: an app with provisioning settings, and the calls a
//! device and the web UI make.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{json, Value};

use crate::coredumps::{device_of, TestDevice};
use crate::fleet::create_model;
use crate::helpers::*;

pub const PROVISIONING: [(&str, &str); 4] = [
    ("DEVICE_BASEURL", "http://iot.example:3101/"),
    ("DEVICE_MQTT_URL", "mqtt://mqtt.example:1883"),
    ("WIFI_SSID", "TestNetwork"),
    ("WIFI_PASSWORD", "test-wifi-password"),
];

/// An app with the provisioning settings, plus `extra` overrides.
pub async fn app_with_provisioning(
    stack: Stack,
    test: &str,
    extra: &[(&str, &str)],
) -> Option<TestApp> {
    let mut overrides: Vec<(&str, &str)> = PROVISIONING.to_vec();
    overrides.extend_from_slice(extra);
    spawn_app_with(stack, test, &overrides, Default::default()).await
}

pub fn client_id(model: &str, device: &TestDevice) -> String {
    format!("iotdevice-{model}-{}", device.key)
}

/// A model `code` with `n` devices.
pub async fn model_with_devices(app: &TestApp, code: &str, n: usize) -> Vec<TestDevice> {
    let model_id = create_model(app, code, None).await;
    let mut devices = Vec::new();
    for _ in 0..n {
        devices.push(device_of(app, model_id).await);
    }
    devices
}

/// `POST /api/iot/token` with the client in the form body.
pub async fn token(
    app: &TestApp,
    client_id: &str,
    secret: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    token_from(app, client_id, secret, None).await
}

/// [`token`] as a client behind the local proxy, which names it in `X-Forwarded-For` (loopback
/// is a trusted proxy by default).
pub async fn token_from(
    app: &TestApp,
    client_id: &str,
    secret: &str,
    forwarded_for: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        urlencode(client_id),
        urlencode(secret)
    );
    let mut request = app
        .client
        .post(app.url("/api/iot/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form);
    if let Some(client) = forwarded_for {
        request = request.header("X-Forwarded-For", client);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        headers,
    )
}

/// A token that must be issued.
pub async fn token_ok(app: &TestApp, client_id: &str, secret: &str) -> String {
    let (status, body, _) = token(app, client_id, secret).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A device call with `Authorization: Bearer <credential>`.
pub async fn iot_get(app: &TestApp, path: &str, credential: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The admin's view of a device.
pub async fn device_json(app: &TestApp, id: i64) -> Value {
    let (status, body) = call(app, http::Method::GET, &format!("/api/devices/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub async fn rotation_state(app: &TestApp, id: i64) -> String {
    device_json(app, id).await["rotation_state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `GET /api/devices/{id}/provisioning?partition_size=…` (the query as given).
pub async fn nvs_package(app: &TestApp, id: i64, query: &str) -> (u16, Value) {
    call(
        app,
        http::Method::GET,
        &format!("/api/devices/{id}/provisioning{query}"),
        None,
    )
    .await
}

/// The eight values a package's NVS image holds, as the firmware reads them.
pub fn nvs_values(package: &Value) -> Vec<(String, String)> {
    let image = base64::engine::general_purpose::STANDARD
        .decode(package["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(image.len() as u64, package["size"].as_u64().unwrap());
    crate::nvs_reader::strings(&image)
        .into_iter()
        .map(|(namespace, key, value)| {
            assert_eq!(namespace, "prov");
            (key, value)
        })
        .collect()
}

pub fn value_of<'a>(values: &'a [(String, String)], key: &str) -> &'a str {
    values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} missing from {values:?}"))
}

/// Espressif's generator's image for these values, or `None` (with a SKIP line) when it is not
/// installed outside `scripts/test.sh`.
pub fn espressif_image(values: &[(String, String)], size: usize) -> Option<Vec<u8>> {
    let python = std::env::var_os("IOTSUPPORT_NVS_GEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/iotsupport-test/venv/bin/python")
        });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/esp-nvs-image/tests/espressif_gen.py");
    let input = json!([{"name": "package", "namespace": "prov", "size": size, "entries": values}]);
    let child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return skip_or_fail(format!("no Python at {}", python.display()));
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.code() == Some(3) {
        return skip_or_fail("esp-idf-nvs-partition-gen is not installed".into());
    }
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    let hex = answer[0]["image_hex"]
        .as_str()
        .expect("the generator made an image");
    Some(hex::decode(hex).unwrap())
}

fn skip_or_fail(reason: String) -> Option<Vec<u8>> {
    if std::env::var("IOTSUPPORT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{reason}");
    }
    eprintln!("SKIP Espressif comparison: {reason}");
    None
}

/// Runs the rotation worker's step once on `app` (as `serve` does every poll).
pub async fn rotation_step(app: &TestApp) -> iotsupport::credentials::rotation::JobReport {
    iotsupport::credentials::rotation::run_job(app.db(), &app.state.config.rotation)
        .await
        .unwrap()
}
