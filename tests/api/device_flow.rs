//! The Python service's device firmware sequence, driven as the device would drive it, against
//! iotsupport alone (no Keycloak): 1. provisioned from NVS; 2. token; 3. config; 4. rotation
//! starts (the provisioning nudge); 5. new package; 6. new token; 7. rotation completed.

use serde_json::Value;

use crate::credentials_support::*;
use crate::fleet::{create_device, create_model};
use crate::helpers::*;

/// What the firmware does with `token_url`: a client-credentials request to that URL's path.
async fn device_token(app: &TestApp, nvs: &[(String, String)]) -> String {
    let token_url = value_of(nvs, "token_url");
    let path = token_url
        .strip_prefix(value_of(nvs, "base_url"))
        .expect("token_url lies under base_url");
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        urlencode(value_of(nvs, "client_id")),
        urlencode(value_of(nvs, "client_secret"))
    );
    let response = app
        .client
        .post(app.url(path))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_original_firmwares_sequence_works_end_to_end() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(stack, "device_flow", &[]).await else {
            continue;
        };
        let model_id = create_model(&app, "thermo", None).await;
        let created = create_device(&app, model_id, r#"{"deviceName": "kitchen"}"#).await;
        let id = created["id"].as_i64().unwrap();

        // 1. The web UI flashes the package; the firmware reads NVS.
        let (status, package) = nvs_package(&app, id, "?partition_size=20480").await;
        assert_eq!(status, 200, "{package}");
        let nvs = nvs_values(&package);
        assert_eq!(
            value_of(&nvs, "client_id"),
            format!("iotdevice-thermo-{}", created["key"].as_str().unwrap())
        );

        // 2. Token. 3. Config.
        let token = device_token(&app, &nvs).await;
        let (status, config) = iot_get(&app, "/api/iot/config", &token).await;
        assert_eq!(
            (status, config["deviceName"].as_str()),
            (200, Some("kitchen")),
            "{stack:?}"
        );

        // 4. The fleet rotates; this device is the one nudged.
        let (status, body) = call(&app, http::Method::POST, "/api/rotation/trigger", None).await;
        assert_eq!((status, body["queued_count"].as_i64()), (200, Some(1)));
        assert_eq!(rotation_state(&app, id).await, "PENDING");
        let nudges: Vec<String> = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            "SELECT payload FROM events WHERE type = 'device_rotation_pending'"
        )
        .fetch_all(p)
        .await)
        .unwrap();
        assert!(
            nudges[0].contains(value_of(&nvs, "client_id")),
            "{nudges:?}"
        );

        // 5. The device fetches a new package with its current token.
        let (status, fresh) = iot_get(&app, "/api/iot/provisioning", &token).await;
        assert_eq!(status, 200, "{fresh}");
        let fresh_nvs: Vec<(String, String)> = [
            "device_key",
            "client_id",
            "client_secret",
            "token_url",
            "base_url",
            "mqtt_url",
            "wifi_ssid",
            "wifi_password",
        ]
        .iter()
        .map(|k| (k.to_string(), fresh[*k].as_str().unwrap().to_string()))
        .collect();
        assert_ne!(
            value_of(&fresh_nvs, "client_secret"),
            value_of(&nvs, "client_secret")
        );
        assert_eq!(
            rotation_state(&app, id).await,
            "PENDING",
            "fetching the package completed it"
        );

        // 6. Reboot, new token. 7. Completed.
        let new_token = device_token(&app, &fresh_nvs).await;
        let after = device_json(&app, id).await;
        assert_eq!(after["rotation_state"], "OK", "{stack:?}: {after}");
        assert!(after["last_rotation_completed_at"].is_string());
        assert_eq!(iot_get(&app, "/api/iot/config", &new_token).await.0, 200);
        assert_eq!(
            iot_get(&app, "/api/iot/config", &token).await.0,
            401,
            "a token of the replaced secret still works"
        );
        app.stop().await;
    }
}
