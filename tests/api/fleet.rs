//! Device models and devices through the admin API, and a device reading its own config. The
//! setup helpers here (`create_model`, `create_device`, `device_of`, `model_with_device`) are what
//! every other test file builds its fleet with.

use std::time::Duration;

use bytes::Bytes;
use iotsupport::storage::ObjectKey;
use serde_json::{json, Value};

pub use crate::client::TestDevice;
use crate::helpers::*;

const SCHEMA: &str = r#"{"type": "object", "required": ["deviceName"], "properties": {"deviceName": {"type": "string"}}}"#;

/// Creates model `code` (named "Model {code}") and returns its id.
pub async fn create_model(app: &TestApp, code: &str, schema: Option<&str>) -> i64 {
    let (status, body) = app
        .create_model(code, &format!("Model {code}"), schema)
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().unwrap()
}

/// Creates a device of model `model_id` with `config` and returns the answer (which holds the
/// secret, shown only here).
pub async fn create_device(app: &TestApp, model_id: i64, config: &str) -> Value {
    let (status, body) = app.create_device(model_id, config).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// A new device of model `model_id` (config `{}`).
pub async fn device_of(app: &TestApp, model_id: i64) -> TestDevice {
    TestDevice::from_created(&create_device(app, model_id, "{}").await)
}

/// A model `code` with one device.
pub async fn model_with_device(app: &TestApp, code: &str) -> TestDevice {
    let model_id = create_model(app, code, None).await;
    device_of(app, model_id).await
}

async fn table_count(app: &TestApp, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(sql).fetch_one(p).await).unwrap()
}

#[tokio::test]
async fn device_models_are_created_listed_updated_and_deleted() {
    for_each_stack("models_crud", &[], async |app| {
        let (status, body) = app
            .create_model("tempsensor", "Temperature", Some(SCHEMA))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["code"], "tempsensor");
        assert_eq!(body["has_config_schema"], true);
        assert_eq!(body["config_schema"], SCHEMA, "schema returned as sent");
        assert_eq!(body["device_count"], 0);
        assert_eq!(body["firmware_version"], Value::Null);
        assert!(
            body["created_at"].as_str().unwrap().ends_with('Z'),
            "{body}"
        );
        let id = body["id"].as_i64().unwrap();
        create_model(app, "a_first", None).await;

        let (_, list) = app.list_models().await;
        assert_eq!(list["count"], 2);
        let codes: Vec<&str> = list["device_models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["a_first", "tempsensor"], "ordered by code");
        assert_eq!(list["device_models"][0]["has_config_schema"], false);

        let (status, body) = app
            .update_model(id, json!({"name": "Temp v2", "config_schema": null}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["name"], "Temp v2");
        assert_eq!(
            body["has_config_schema"], true,
            "null leaves the schema alone"
        );
        let (_, body) = app.update_model(id, json!({"config_schema": ""})).await;
        assert_eq!(body["has_config_schema"], false, "empty string clears it");
        assert_eq!(body["config_schema"], Value::Null);
        assert_eq!(body["code"], "tempsensor");

        assert_eq!(app.delete_model(id).await.0, 204);
        let (status, body) = app.get_model(id).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"], format!("DeviceModel {id} was not found"));
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
    })
    .await;
}

#[tokio::test]
async fn bad_model_input_is_a_400_that_writes_nothing() {
    let Some(app) = spawn_app(Stack::Production, "models_validation").await else {
        return;
    };
    for (body, needle) in [
        (json!({"code": "Bad-Code", "name": "x"}), "code must be"),
        (json!({"code": "", "name": "x"}), "code must be"),
        (json!({"code": "ok", "name": ""}), "name must be"),
        (
            json!({"code": "ok", "name": "x".repeat(256)}),
            "name must be",
        ),
        (
            json!({"code": "ok", "name": "x", "config_schema": "{nope"}),
            "config_schema must be valid JSON",
        ),
        (
            json!({"code": "ok", "name": "x", "config_schema": "{\"type\": 12}"}),
            "not a valid JSON Schema",
        ),
        (json!({"name": "x"}), "Invalid JSON body"),
    ] {
        let (status, response) = app.post_model(body.clone()).await;
        assert_eq!(status, 400, "{body}: {response}");
        assert_eq!(response["code"], "VALIDATION_FAILED");
        assert!(
            response["error"].as_str().unwrap().contains(needle),
            "{body}: {response}"
        );
    }
    assert_eq!(table_count(&app, "device_models").await, 0);
    let response = app
        .client
        .post(app.url("/api/device-models"))
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_creates_of_one_code_yield_exactly_one_model() {
    for_each_stack("models_race", &[], async |app| {
        let requests = (0..8).map(|_| app.create_model("tempsensor", "T", None));
        let results = futures::future::join_all(requests).await;
        let created = results.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(created, 1, "{results:?}");
        for (status, body) in results.iter().filter(|(s, _)| *s != 201) {
            assert_eq!(*status, 409, "{body}");
            assert_eq!(body["error"], "DeviceModel for tempsensor already exists");
            assert_eq!(body["code"], "RECORD_EXISTS");
        }
        assert_eq!(table_count(app, "device_models").await, 1);
    })
    .await;
}

#[tokio::test]
async fn a_model_with_devices_cannot_be_deleted_and_a_deleted_model_takes_its_firmware_objects() {
    for_each_stack("models_delete", &[], async |app| {
        let model_id = create_model(app, "sensor", None).await;
        let device = device_of(app, model_id).await;
        let (status, body) = app.delete_model(model_id).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "CONFLICT");
        assert!(body["error"].as_str().unwrap().contains("sensor"), "{body}");
        assert_eq!(table_count(app, "device_models").await, 1);

        // A stored firmware version with its five objects.
        let now = iotsupport::db::now();
        iotsupport::on_pool!(app.db(), |p| sqlx::query("INSERT INTO firmware_versions (device_model_id, version, uploaded_at, created_at) VALUES ($1, '1.0.0', $2, $2)")
            .bind(model_id).bind(now).execute(p).await.map(|r| r.rows_affected())).unwrap();
        let keys: Vec<ObjectKey> = iotsupport::layout::firmware_keys("sensor", "1.0.0").unwrap();
        for k in &keys {
            app.state
                .storage
                .put(k, Bytes::from_static(b"artifact"))
                .await
                .unwrap();
        }

        assert_eq!(app.delete_device(device.id).await.0, 204);
        assert_eq!(app.delete_model(model_id).await.0, 204);
        assert_eq!(table_count(app, "firmware_versions").await, 0);
        let gone = eventually(Duration::from_secs(10), || async {
            for k in &keys {
                if app.state.storage.head(k).await.is_ok() {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(gone, "firmware objects left behind");
    })
    .await;
}

#[tokio::test]
async fn devices_get_a_random_key_and_a_secret_shown_once() {
    for_each_stack("devices_create", &[], async |app| {
        let model_id = create_model(app, "sensor", Some(SCHEMA)).await;
        let config =
            r#"{"deviceName": "Kitchen", "deviceEntityId": "sensor.kitchen", "enableOTA": true}"#;
        let device = create_device(app, model_id, config).await;
        let key = device["key"].as_str().unwrap();
        assert_eq!(key.len(), 8);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
            "{key}"
        );
        assert_eq!(device["device_model"]["code"], "sensor");
        assert_eq!(device["config"], config, "config returned as sent");
        assert_eq!(device["device_name"], "Kitchen");
        assert_eq!(device["device_entity_id"], "sensor.kitchen");
        assert_eq!(device["enable_ota"], true);
        assert_eq!(device["active"], true);
        let secret = device["device_secret"].as_str().unwrap();
        assert!(secret.len() >= 40);

        let id = device["id"].as_i64().unwrap();
        let (_, fetched) = app.get_device(id).await;
        assert!(
            fetched.get("device_secret").is_none(),
            "secret shown again: {fetched}"
        );
        assert_eq!(fetched["key"], key);

        // The device reads its config verbatim with its credential.
        let response = app.iot_config(&format!("{key}.{secret}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert_eq!(response.text().await.unwrap(), config);

        // A new secret replaces the old one at once.
        let (status, rotated) = app.replace_device_secret(id).await;
        assert_eq!(status, 200);
        let new_secret = rotated["device_secret"].as_str().unwrap();
        assert_ne!(new_secret, secret);
        let old = app.iot_config(&format!("{key}.{secret}")).await;
        assert_eq!(old.status(), 401);
        let new = app.iot_config(&format!("{key}.{new_secret}")).await;
        assert_eq!(new.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn device_configs_must_satisfy_the_models_schema() {
    let Some(app) = spawn_app(Stack::Production, "devices_schema").await else {
        return;
    };
    let model_id = create_model(&app, "sensor", Some(SCHEMA)).await;
    let (status, body) = app.create_device(model_id, "{\"other\": 1}").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "Config validation failed: 'deviceName' is a required property"
    );
    let (status, body) = app.create_device(model_id, "{not json").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("config must be valid JSON"),
        "{body}"
    );
    let (status, body) = app.create_device(9999, "{}").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "DeviceModel 9999 was not found");
    assert_eq!(
        table_count(&app, "devices").await,
        0,
        "nothing written by refused creates"
    );

    let device = create_device(&app, model_id, r#"{"deviceName": "A"}"#).await;
    let id = device["id"].as_i64().unwrap();
    let (status, body) = app.update_device(id, json!({"config": "{}"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .update_device(
            id,
            json!({"config": r#"{"deviceName": "B", "enableOTA": false}"#, "active": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_name"], "B");
    assert_eq!(body["enable_ota"], false);
    assert_eq!(body["active"], false);
    let (status, body) = app.update_device(9999, json!({"active": true})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "Device 9999 was not found");
    app.stop().await;
}

#[tokio::test]
async fn devices_are_listed_by_key_and_filtered_by_model() {
    let Some(app) = spawn_app(Stack::Production, "devices_list").await else {
        return;
    };
    let a = create_model(&app, "a", None).await;
    let b = create_model(&app, "b", None).await;
    for _ in 0..3 {
        create_device(&app, a, "{}").await;
    }
    create_device(&app, b, "{}").await;
    let (_, all) = app.list_devices().await;
    assert_eq!(all["count"], 4);
    let keys: Vec<&str> = all["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(all["devices"][0].get("last_coredump_at").is_some());
    let (_, only_b) = app.list_devices_of_model(b).await;
    assert_eq!(only_b["count"], 1);
    assert_eq!(only_b["devices"][0]["device_model_id"], b);
    let (_, models) = app.list_models().await;
    assert_eq!(models["device_models"][0]["device_count"], 3);
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_device_deletes_its_dump_objects_through_the_outbox() {
    for_each_stack("devices_delete", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let now = iotsupport::db::now();
        let dump_id: i64 = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            "INSERT INTO coredumps (device_id, chip, firmware_version, size, uploaded_at, created_at, updated_at)
             VALUES ($1, 'esp32', '1.0.0', 4, $2, $2, $2) RETURNING id")
            .bind(device.id).bind(now).fetch_one(p).await).unwrap();
        let object = iotsupport::layout::coredump_key(&device.key, dump_id).unwrap();
        app.state
            .storage
            .put(&object, Bytes::from_static(b"dump"))
            .await
            .unwrap();

        let (_, listed) = app.list_devices().await;
        assert!(
            listed["devices"][0]["last_coredump_at"].is_string(),
            "{listed}"
        );

        assert_eq!(app.delete_device(device.id).await.0, 204);
        assert_eq!(table_count(app, "coredumps").await, 0);
        let gone = eventually(Duration::from_secs(10), || async {
            app.state.storage.head(&object).await.is_err()
        })
        .await;
        assert!(gone, "dump object left behind");
        assert_eq!(app.delete_device(device.id).await.0, 404);
    })
    .await;
}

#[tokio::test]
async fn admin_routes_need_the_admin_token_and_devices_cannot_use_them() {
    let token = "admin-token-for-tests-0123456789";
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "fleet_auth",
        &[("ADMIN_TOKEN", token)],
        Default::default(),
    )
    .await
    else {
        return;
    };
    assert_eq!(app.get("/api/device-models").await.status(), 401);
    let response = app
        .client
        .post(app.url("/api/device-models"))
        .bearer_auth(token)
        .json(&json!({"code": "m", "name": "M"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let model_id = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    // The endpoint methods send the app's admin token.
    let device = device_of(&app, model_id).await;
    assert_eq!(
        app.client
            .get(app.url("/api/devices"))
            .bearer_auth(&device.credential)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(app.iot_config(token).await.status(), 401);
    app.stop().await;
}
