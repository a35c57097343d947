//! NUL characters (U+0000) never reach a text column: PostgreSQL refuses 0x00 in text, so without
//! a check the same request is a 500 there and stored on SQLite. On both backends the answer is
//! 400 `VALIDATION_FAILED` and nothing is written.
//!
//! A device config is JSON *text*, and JSON text cannot hold a raw NUL (it must be escaped), so a
//! config with a `\u0000` escape is stored verbatim, as any config is; only the fields copied out
//! of it into columns (`deviceName`, `deviceEntityId`) must not decode to a NUL.

use http::Method;
use serde_json::{json, Value};

use crate::client::status_and_json;
use crate::coredumps::{count, upload};
use crate::firmware_support::*;
use crate::fleet::{create_device, create_model, device_of};
use crate::helpers::*;

fn assert_refused(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(body["code"], "VALIDATION_FAILED", "{what}: {body}");
}

#[tokio::test]
async fn a_nul_in_a_model_name_is_a_400_and_nothing_is_stored() {
    for_each_stack("nul_model_name", &[], async |app| {
        let (status, body) = app.create_model("sensor", "Kitchen\u{0}", None).await;
        assert_refused(status, &body, "create");
        assert!(
            body["error"].as_str().unwrap().contains("NUL"),
            "the message says why: {body}"
        );
        assert_eq!(count(app, "device_models").await, 0);

        let id = create_model(app, "sensor", None).await;
        let (status, body) = app.update_model(id, json!({"name": "a\u{0}b"})).await;
        assert_refused(status, &body, "update");
        assert_eq!(app.get_model(id).await.1["name"], "Model sensor");
    })
    .await;
}

#[tokio::test]
async fn a_config_whose_copied_fields_hold_a_nul_is_a_400_and_nothing_is_stored() {
    for_each_stack("nul_config_fields", &[], async |app| {
        let model = create_model(app, "sensor", None).await;
        for config in [
            json!(r#"{"deviceName": "Kitchen\u0000"}"#),
            json!(r#"{"deviceEntityId": "\u0000"}"#),
            json!({"deviceName": "as an object\u{0}"}),
        ] {
            let (status, body) = app
                .post_device(json!({"device_model_id": model, "config": config}))
                .await;
            assert_refused(status, &body, &config.to_string());
            assert!(body["error"].as_str().unwrap().contains("NUL"), "{body}");
        }
        assert_eq!(count(app, "devices").await, 0);

        let device = device_of(app, model).await;
        let (status, body) = app
            .update_device(device.id, json!({"config": r#"{"deviceName": "x\u0000"}"#}))
            .await;
        assert_refused(status, &body, "update");
        assert_eq!(app.get_device(device.id).await.1["config"], "{}");
    })
    .await;
}

#[tokio::test]
async fn a_nul_escape_elsewhere_in_a_config_is_stored_verbatim() {
    for_each_stack("nul_config_verbatim", &[], async |app| {
        let model = create_model(app, "sensor", None).await;
        let text = r#"{"deviceName": "Kitchen", "motd": "a\u0000b"}"#;
        let created = create_device(app, model, text).await;
        assert_eq!(created["config"], text);
        assert_eq!(created["device_name"], "Kitchen");
        let (_, fetched) = app.get_device(created["id"].as_i64().unwrap()).await;
        assert_eq!(fetched["config"], text);
    })
    .await;
}

#[tokio::test]
async fn a_nul_in_a_core_dump_chip_or_version_is_a_400_and_nothing_is_stored() {
    for_each_stack("nul_coredump_query", &[], async |app| {
        let model = create_model(app, "sensor", None).await;
        let device = device_of(app, model).await;
        for query in [
            "chip=esp%0032&firmware_version=1.0",
            "chip=esp32&firmware_version=1.0%00",
            "chip=%00&firmware_version=%00",
        ] {
            let (status, body) = upload(app, &device, query, vec![1u8; 64]).await;
            assert_refused(status, &body, query);
        }
        assert_eq!(count(app, "coredumps").await, 0);
        assert_eq!(count(app, "jobs").await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_nul_in_a_firmware_version_or_model_code_is_a_400() {
    TestApp::builder("nul_firmware_lookups")
        .env("FIRMWARE_CACHE_BYTES", "0")
        .for_each_stack(async |app| {
            let model = create_model(app, CODE, None).await;
            upload_ok(app, model, CODE, &Build::new("1.0.0", "nul")).await;

            let (status, body) = app.set_current_firmware(model, "1.0.0\u{0}").await;
            assert_refused(status, &body, "rollback to a version with a NUL");
            let (status, body) = app.delete_firmware_version(model, "1.0.0\u{0}").await;
            assert_refused(status, &body, "delete a version with a NUL");
            let r = app
                .download_firmware_artifact(model, "1.0.0\u{0}", "firmware.bin", &[])
                .await;
            let (status, body) = status_and_json(r).await;
            assert_refused(status, &body, "download a version with a NUL");
            let (status, body) = app.pipeline_firmware_version("tempsensor\u{0}").await;
            assert_refused(status, &body, "a model code with a NUL");
            let path = "/api/devices?rotation_state=OK%00";
            let (status, body) = status_and_json(
                app.admin_request(Method::GET, app.url(path))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_refused(status, &body, "a query value with a NUL");

            assert_eq!(current_version(app, model).await.as_deref(), Some("1.0.0"));
            assert_eq!(stored_versions(app, model).await, ["1.0.0"]);
        })
        .await;
}
