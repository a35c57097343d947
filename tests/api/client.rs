//! The API as methods of [`TestApp`], one per endpoint (as zero-to-production's `TestApp` has
//! `post_subscriptions`): a test says what it does — `app.create_device(model, "{}")`,
//! `app.iot_firmware(&device.credential, &[("range", "bytes=0-9")])` — and the paths, verbs and
//! credentials are written down once, here.
//!
//! - Admin endpoints authenticate as the admin: with `ADMIN_TOKEN` when the app has one, with
//!   nothing in open mode. Tests about authentication itself build their requests by hand.
//! - Device endpoints (`iot_*`) take the device's `key.secret` credential.
//! - Endpoints that answer JSON return `(status, body)`; `body` is the answer parsed as JSON, or
//!   its text as a JSON string when it is not JSON (so a failed assertion shows it).
//! - Downloads and endpoints whose headers a test looks at return the `reqwest::Response`; they
//!   take extra request headers (`range`, `if-none-match`, …).

use http::Method;
use reqwest::{RequestBuilder, Response, Url};
use serde_json::{json, Value};

use crate::helpers::{eventually, TestApp};
use std::time::Duration;

/// A device as the tests use it: its ids and its `key.secret` credential.
#[derive(Debug, Clone)]
pub struct TestDevice {
    pub id: i64,
    pub key: String,
    pub credential: String,
    pub model_id: i64,
}

impl TestDevice {
    /// The device in a `201` answer of `POST /api/devices` (which shows the secret, once).
    pub fn from_created(body: &Value) -> TestDevice {
        let key = body["key"].as_str().expect("a created device").to_string();
        let secret = body["device_secret"].as_str().expect("a new device secret");
        TestDevice {
            id: body["id"].as_i64().unwrap(),
            credential: format!("{key}.{secret}"),
            key,
            model_id: body["device_model_id"].as_i64().unwrap(),
        }
    }
}

/// The status and the JSON body (or the text as a JSON string) of `response`.
pub async fn status_and_json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("request")
}

async fn send_json(request: RequestBuilder) -> (u16, Value) {
    status_and_json(send(request).await).await
}

fn with_headers(mut request: RequestBuilder, headers: &[(&str, &str)]) -> RequestBuilder {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

impl TestApp {
    /// The URL of the path made of `segments`, each percent-encoded as one path segment (a
    /// firmware version may hold `#`, `?`, spaces, …).
    pub fn url_of(&self, segments: &[&str]) -> Url {
        let mut url = Url::parse(&self.address).expect("app address");
        url.path_segments_mut()
            .expect("a base URL")
            .clear()
            .extend(segments);
        url
    }

    /// A request authenticated as the admin (`ADMIN_TOKEN` when the app has one).
    pub fn admin_request(&self, method: Method, url: impl reqwest::IntoUrl) -> RequestBuilder {
        let request = self.client.request(method, url);
        match &self.state.config.admin_token {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        }
    }

    /// A request authenticated as the device whose `key.secret` is `credential`.
    pub fn device_request(&self, method: Method, path: &str, credential: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(credential)
    }

    /// `GET {path}` as the admin: status and JSON body.
    pub async fn admin_get_json(&self, path: &str) -> (u16, Value) {
        send_json(self.admin(Method::GET, path)).await
    }

    fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.admin_request(method, self.url(path))
    }

    // --- device models ------------------------------------------------------------------------

    /// `GET /api/device-models`
    pub async fn list_models(&self) -> (u16, Value) {
        send_json(self.admin(Method::GET, "/api/device-models")).await
    }

    /// `POST /api/device-models` with `code`, `name` and the schema (JSON text) if any.
    pub async fn create_model(
        &self,
        code: &str,
        name: &str,
        config_schema: Option<&str>,
    ) -> (u16, Value) {
        self.post_model(json!({"code": code, "name": name, "config_schema": config_schema}))
            .await
    }

    /// `POST /api/device-models` with any body (for validation tests).
    pub async fn post_model(&self, body: Value) -> (u16, Value) {
        send_json(self.admin(Method::POST, "/api/device-models").json(&body)).await
    }

    /// `GET /api/device-models/{id}`
    pub async fn get_model(&self, id: i64) -> (u16, Value) {
        send_json(self.admin(Method::GET, &format!("/api/device-models/{id}"))).await
    }

    /// `PUT /api/device-models/{id}`
    pub async fn update_model(&self, id: i64, body: Value) -> (u16, Value) {
        send_json(
            self.admin(Method::PUT, &format!("/api/device-models/{id}"))
                .json(&body),
        )
        .await
    }

    /// `DELETE /api/device-models/{id}`
    pub async fn delete_model(&self, id: i64) -> (u16, Value) {
        send_json(self.admin(Method::DELETE, &format!("/api/device-models/{id}"))).await
    }

    // --- devices ------------------------------------------------------------------------------

    /// `GET /api/devices`
    pub async fn list_devices(&self) -> (u16, Value) {
        send_json(self.admin(Method::GET, "/api/devices")).await
    }

    /// `GET /api/devices?model_id={model_id}`
    pub async fn list_devices_of_model(&self, model_id: i64) -> (u16, Value) {
        send_json(self.admin(Method::GET, &format!("/api/devices?model_id={model_id}"))).await
    }

    /// `POST /api/devices` for model `model_id` with `config` (JSON text).
    pub async fn create_device(&self, model_id: i64, config: &str) -> (u16, Value) {
        self.post_device(json!({"device_model_id": model_id, "config": config}))
            .await
    }

    /// `POST /api/devices` with any body (for validation tests).
    pub async fn post_device(&self, body: Value) -> (u16, Value) {
        send_json(self.admin(Method::POST, "/api/devices").json(&body)).await
    }

    /// Whether the app's device-log intake got its MQTT subscription within 10 s (lines
    /// published before that are not delivered to it).
    pub async fn mqtt_connected(&self) -> bool {
        eventually(Duration::from_secs(10), || async {
            self.state.log_hub.intake_subscribed()
        })
        .await
    }

    /// `GET /api/devices/{id}/logs?{query}` (`query` already encoded, may be empty).
    pub async fn device_logs(&self, id: i64, query: &str) -> (u16, Value) {
        send_json(self.admin(Method::GET, &format!("/api/devices/{id}/logs?{query}"))).await
    }

    /// `POST /api/device-logs/subscribe` or `/unsubscribe` (`action`) with any body.
    pub async fn device_log_subscription(&self, action: &str, body: Value) -> (u16, Value) {
        send_json(
            self.admin(Method::POST, &format!("/api/device-logs/{action}"))
                .json(&body),
        )
        .await
    }

    /// `GET /api/devices/{id}`
    pub async fn get_device(&self, id: i64) -> (u16, Value) {
        send_json(self.admin(Method::GET, &format!("/api/devices/{id}"))).await
    }

    /// `PUT /api/devices/{id}`
    pub async fn update_device(&self, id: i64, body: Value) -> (u16, Value) {
        send_json(
            self.admin(Method::PUT, &format!("/api/devices/{id}"))
                .json(&body),
        )
        .await
    }

    /// `DELETE /api/devices/{id}`
    pub async fn delete_device(&self, id: i64) -> (u16, Value) {
        send_json(self.admin(Method::DELETE, &format!("/api/devices/{id}"))).await
    }

    /// `POST /api/devices/{id}/secret`: a new secret, shown once.
    pub async fn replace_device_secret(&self, id: i64) -> (u16, Value) {
        send_json(self.admin(Method::POST, &format!("/api/devices/{id}/secret"))).await
    }

    // --- firmware (admin) ---------------------------------------------------------------------

    /// `POST /api/device-models/{id}/firmware` with `zip` as the raw body.
    pub async fn upload_firmware(&self, model_id: i64, zip: Vec<u8>) -> (u16, Value) {
        self.upload_firmware_as(model_id, "application/zip", zip)
            .await
    }

    /// `POST /api/device-models/{id}/firmware` with any content type (a multipart form, …).
    pub async fn upload_firmware_as(
        &self,
        model_id: i64,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let path = format!("/api/device-models/{model_id}/firmware");
        send_json(
            self.admin(Method::POST, &path)
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// `GET /api/device-models/{id}/firmware/versions`
    pub async fn firmware_versions(&self, model_id: i64) -> (u16, Value) {
        let path = format!("/api/device-models/{model_id}/firmware/versions");
        send_json(self.admin(Method::GET, &path)).await
    }

    /// `PUT /api/device-models/{id}/firmware/current`: roll back (or forward) to `version`.
    pub async fn set_current_firmware(&self, model_id: i64, version: &str) -> (u16, Value) {
        let path = format!("/api/device-models/{model_id}/firmware/current");
        send_json(
            self.admin(Method::PUT, &path)
                .json(&json!({ "version": version })),
        )
        .await
    }

    /// `DELETE /api/device-models/{id}/firmware/{version}`
    pub async fn delete_firmware_version(&self, model_id: i64, version: &str) -> (u16, Value) {
        let id = model_id.to_string();
        let url = self.url_of(&["api", "device-models", &id, "firmware", version]);
        send_json(self.admin_request(Method::DELETE, url)).await
    }

    /// `GET /api/device-models/{id}/firmware`: the current image.
    pub async fn download_firmware(&self, model_id: i64, headers: &[(&str, &str)]) -> Response {
        let path = format!("/api/device-models/{model_id}/firmware");
        send(with_headers(self.admin(Method::GET, &path), headers)).await
    }

    /// `GET /api/device-models/{id}/firmware/{version}/{artifact}`
    pub async fn download_firmware_artifact(
        &self,
        model_id: i64,
        version: &str,
        artifact: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let id = model_id.to_string();
        let url = self.url_of(&["api", "device-models", &id, "firmware", version, artifact]);
        send(with_headers(self.admin_request(Method::GET, url), headers)).await
    }

    // --- CI pipeline --------------------------------------------------------------------------

    /// `POST /api/pipeline/models/{code}/firmware` with `zip` as the raw body.
    pub async fn pipeline_upload_firmware(&self, code: &str, zip: Vec<u8>) -> (u16, Value) {
        let path = format!("/api/pipeline/models/{code}/firmware");
        send_json(
            self.admin(Method::POST, &path)
                .header("content-type", "application/zip")
                .body(zip),
        )
        .await
    }

    /// `GET /api/pipeline/models/{code}/firmware-version`
    pub async fn pipeline_firmware_version(&self, code: &str) -> (u16, Value) {
        let path = format!("/api/pipeline/models/{code}/firmware-version");
        send_json(self.admin(Method::GET, &path)).await
    }

    // --- core dumps (admin) -------------------------------------------------------------------

    /// `GET /api/devices/{id}/coredumps`
    pub async fn list_coredumps(&self, device_id: i64) -> (u16, Value) {
        let path = format!("/api/devices/{device_id}/coredumps");
        send_json(self.admin(Method::GET, &path)).await
    }

    /// `GET /api/devices/{id}/coredumps/{cid}`
    pub async fn get_coredump(&self, device_id: i64, id: i64) -> (u16, Value) {
        let path = format!("/api/devices/{device_id}/coredumps/{id}");
        send_json(self.admin(Method::GET, &path)).await
    }

    /// `GET /api/devices/{id}/coredumps/{cid}/download`
    pub async fn download_coredump(
        &self,
        device_id: i64,
        id: i64,
        headers: &[(&str, &str)],
    ) -> Response {
        let path = format!("/api/devices/{device_id}/coredumps/{id}/download");
        send(with_headers(self.admin(Method::GET, &path), headers)).await
    }

    /// `POST /api/devices/{id}/coredumps/{cid}/reparse`
    pub async fn reparse_coredump(&self, device_id: i64, id: i64) -> (u16, Value) {
        let path = format!("/api/devices/{device_id}/coredumps/{id}/reparse");
        send_json(self.admin(Method::POST, &path)).await
    }

    /// `DELETE /api/devices/{id}/coredumps/{cid}`
    pub async fn delete_coredump(&self, device_id: i64, id: i64) -> (u16, Value) {
        let path = format!("/api/devices/{device_id}/coredumps/{id}");
        send_json(self.admin(Method::DELETE, &path)).await
    }

    /// `DELETE /api/devices/{id}/coredumps`: all of the device's dumps.
    pub async fn delete_coredumps(&self, device_id: i64) -> (u16, Value) {
        let path = format!("/api/devices/{device_id}/coredumps");
        send_json(self.admin(Method::DELETE, &path)).await
    }

    // --- crash groups -------------------------------------------------------------------------

    /// `GET /api/device-models/{id}/crash-groups?{query}` (`query` may be empty).
    pub async fn list_crash_groups(&self, model_id: i64, query: &str) -> (u16, Value) {
        let path = format!("/api/device-models/{model_id}/crash-groups?{query}");
        send_json(self.admin(Method::GET, &path)).await
    }

    /// `GET /api/crash-groups/{id}`
    pub async fn get_crash_group(&self, id: i64) -> (u16, Value) {
        send_json(self.admin(Method::GET, &format!("/api/crash-groups/{id}"))).await
    }

    /// `PUT /api/crash-groups/{id}` with `body` (`{"status": …}`).
    pub async fn update_crash_group(&self, id: i64, body: Value) -> (u16, Value) {
        send_json(
            self.admin(Method::PUT, &format!("/api/crash-groups/{id}"))
                .json(&body),
        )
        .await
    }

    // --- the device API -----------------------------------------------------------------------

    /// `GET /api/iot/config` as the device.
    pub async fn iot_config(&self, credential: &str) -> Response {
        self.iot_config_with(credential, &[]).await
    }

    /// `GET /api/iot/config` as the device, with extra headers (`x-firmware-version`, …).
    pub async fn iot_config_with(&self, credential: &str, headers: &[(&str, &str)]) -> Response {
        let request = self.device_request(Method::GET, "/api/iot/config", credential);
        send(with_headers(request, headers)).await
    }

    /// `GET /api/iot/firmware` as the device: its model's current image.
    pub async fn iot_firmware(&self, credential: &str, headers: &[(&str, &str)]) -> Response {
        let request = self.device_request(Method::GET, "/api/iot/firmware", credential);
        send(with_headers(request, headers)).await
    }

    /// `GET /api/iot/firmware-version` as the device.
    pub async fn iot_firmware_version(&self, credential: &str) -> (u16, Value) {
        send_json(self.device_request(Method::GET, "/api/iot/firmware-version", credential)).await
    }

    /// `POST /api/iot/coredump?{query}` as the device, with `body` as the dump.
    pub async fn iot_upload_coredump(
        &self,
        credential: &str,
        query: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let path = format!("/api/iot/coredump?{query}");
        send_json(
            self.device_request(Method::POST, &path, credential)
                .body(body),
        )
        .await
    }

    // --- operations and documentation ---------------------------------------------------------

    /// `GET /health/healthz`
    pub async fn healthz(&self) -> (u16, Value) {
        send_json(self.client.get(self.url("/health/healthz"))).await
    }

    /// `GET /health/readyz`
    pub async fn readyz(&self) -> (u16, Value) {
        send_json(self.client.get(self.url("/health/readyz"))).await
    }

    /// `GET /health/readyz` until it answers `status` (a check's answer is reused for a second,
    /// so a change shows within about that), at most 10 s; the last answer.
    pub async fn readyz_becomes(&self, status: u16) -> (u16, Value) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let answer = self.readyz().await;
            if answer.0 == status || std::time::Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// `GET /api/docs/openapi.json`
    pub async fn openapi(&self) -> Value {
        let (status, doc) = send_json(self.client.get(self.url("/api/docs/openapi.json"))).await;
        assert_eq!(status, 200, "{doc}");
        doc
    }
}
