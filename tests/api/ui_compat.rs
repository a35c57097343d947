//! What the Python service's web UI (github.com/pvginkel/IoTSupportUI) needs from the admin API,
//! found by driving the unmodified UI against the service (`scripts/ui-check.sh`). Each test
//! pins one thing the UI relies on, in the UI's own terms.

use serde_json::{json, Value};

use crate::helpers::*;

// Unusual spacing and key order on purpose: the text must come back as sent, not re-serialised.
const SCHEMA: &str = "{\"type\": \"object\",\n  \"required\": [\"deviceName\", \"deviceEntityId\"],\n  \"properties\": {\"deviceName\": {\"type\": \"string\"}}}";
const CONFIG: &str = "{\n  \"enableOTA\": false,\n  \"deviceName\": \"Hall\",\n  \"deviceEntityId\": \"sensor.hall\"\n}";

/// The UI's model editor and device editor put `config_schema` and `config` into a text editor
/// and `JSON.parse` them (its generated types say `string`); an object there blanks the editor
/// and silently drops the schema validation of device configs.
#[tokio::test]
async fn schemas_and_configs_come_back_as_the_json_text_that_was_sent() {
    for_each_stack("ui_text_fields", &[], async |app| {
        let (status, model) = app.create_model("hall", "Hall sensor", Some(SCHEMA)).await;
        assert_eq!(status, 201, "{model}");
        assert_eq!(model["config_schema"], SCHEMA, "create");
        let model_id = model["id"].as_i64().unwrap();
        let (_, fetched) = app.get_model(model_id).await;
        assert_eq!(fetched["config_schema"], SCHEMA, "get");
        // The UI sends null for "unchanged" when only the name changes.
        let (_, renamed) = app
            .update_model(
                model_id,
                json!({"name": "Hall sensor v2", "config_schema": null}),
            )
            .await;
        assert_eq!(renamed["config_schema"], SCHEMA, "update");

        let (status, device) = app.create_device(model_id, CONFIG).await;
        assert_eq!(status, 201, "{device}");
        assert_eq!(device["config"], CONFIG, "create");
        assert_eq!(device["device_name"], "Hall");
        let id = device["id"].as_i64().unwrap();
        let (_, fetched) = app.get_device(id).await;
        assert_eq!(fetched["config"], CONFIG, "get");
        let edited = CONFIG.replace("Hall", "Hallway");
        let (status, updated) = app
            .update_device(id, json!({"config": edited, "active": false}))
            .await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["config"], Value::String(edited), "update");
    })
    .await;
}
