//! Provisioning packages (SPEC §13): the NVS image the web UI flashes (byte-identical to
//! Espressif's generator, decoding to the eight keys), the device's JSON package, pending secrets
//! that never revoke the current one, and the original's 400s, which leave nothing behind.

use serde_json::Value;

use crate::credentials_support::*;
use crate::helpers::*;

async fn pending_hash(app: &TestApp, id: i64) -> Option<String> {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT pending_secret_hash FROM devices WHERE id = $1"
    )
    .bind(id)
    .fetch_one(p)
    .await)
    .unwrap()
}

#[tokio::test]
async fn the_nvs_package_decodes_to_the_eight_keys_and_matches_espressifs_generator() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(stack, "nvs_package", &[]).await else {
            continue;
        };
        let device = &model_with_devices(&app, "thermo", 1).await[0];
        let mut last_pending = String::new();
        for size in [12288usize, 0x5000, 0x6000] {
            let (status, package) =
                nvs_package(&app, device.id, &format!("?partition_size={size}")).await;
            assert_eq!(status, 200, "{package}");
            assert_eq!(package["size"], size);
            let values = nvs_values(&package);
            let keys: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "device_key",
                    "client_id",
                    "client_secret",
                    "token_url",
                    "base_url",
                    "mqtt_url",
                    "wifi_ssid",
                    "wifi_password"
                ]
            );
            assert_eq!(value_of(&values, "device_key"), device.key);
            assert_eq!(value_of(&values, "client_id"), client_id("thermo", device));
            assert_eq!(
                value_of(&values, "token_url"),
                "http://iot.example:3101/api/iot/token"
            );
            assert_eq!(value_of(&values, "base_url"), "http://iot.example:3101");
            assert_eq!(value_of(&values, "mqtt_url"), "mqtt://mqtt.example:1883");
            assert_eq!(value_of(&values, "wifi_ssid"), "TestNetwork");
            assert_eq!(value_of(&values, "wifi_password"), "test-wifi-password");
            if let Some(theirs) = espressif_image(&values, size) {
                let ours = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    package["data"].as_str().unwrap(),
                )
                .unwrap();
                assert!(ours == theirs, "{stack:?} {size}: not Espressif's bytes");
            }
            // The package's secret is the device's pending one; the current one still works.
            last_pending = format!("{}.{}", device.key, value_of(&values, "client_secret"));
            assert_eq!(
                iot_get(&app, "/api/iot/firmware-version", &device.credential)
                    .await
                    .0,
                200,
                "the current secret was revoked"
            );
            assert!(pending_hash(&app, device.id).await.is_some());
        }
        // The flashed device authenticates with the package's secret, which promotes it.
        assert_eq!(iot_get(&app, "/api/iot/config", &last_pending).await.0, 200);
        assert_eq!(
            iot_get(&app, "/api/iot/config", &device.credential).await.0,
            401
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn the_device_json_package_mints_a_pending_secret_that_replaces_the_earlier_one() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(stack, "iot_package", &[]).await else {
            continue;
        };
        let device = &model_with_devices(&app, "thermo", 1).await[0];
        let response = app
            .client
            .get(app.url("/api/iot/provisioning"))
            .bearer_auth(&device.credential)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let first: Value = response.json().await.unwrap();
        assert_eq!(first["client_id"], client_id("thermo", device).as_str());
        assert_eq!(first["device_key"], device.key.as_str());
        assert_eq!(first["token_url"], "http://iot.example:3101/api/iot/token");
        for key in [
            "client_secret",
            "base_url",
            "mqtt_url",
            "wifi_ssid",
            "wifi_password",
        ] {
            assert!(
                first[key].as_str().is_some_and(|v| !v.is_empty()),
                "{key}: {first}"
            );
        }
        let (_, second) = iot_get(&app, "/api/iot/provisioning", &device.credential).await;
        let old_pending = format!(
            "{}.{}",
            device.key,
            first["client_secret"].as_str().unwrap()
        );
        let new_pending = format!(
            "{}.{}",
            device.key,
            second["client_secret"].as_str().unwrap()
        );
        assert_eq!(
            iot_get(&app, "/api/iot/config", &old_pending).await.0,
            401,
            "{stack:?}: an earlier pending secret still works"
        );
        assert_eq!(
            iot_get(&app, "/api/iot/config", &device.credential).await.0,
            200
        );
        // Using the new one promotes it; the old current one is gone then.
        assert_eq!(iot_get(&app, "/api/iot/config", &new_pending).await.0, 200);
        assert_eq!(
            iot_get(&app, "/api/iot/config", &device.credential).await.0,
            401
        );
        assert_eq!(
            iot_get(&app, "/api/iot/firmware-version", &new_pending)
                .await
                .0,
            200
        );
        assert!(pending_hash(&app, device.id).await.is_none());
        app.stop().await;
    }
}

#[tokio::test]
async fn bad_sizes_and_missing_settings_are_400s_that_mint_nothing() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_with(
            stack,
            "provisioning_400",
            &[("DEVICE_BASEURL", "http://iot.example:3101")],
            Default::default(),
        )
        .await
        else {
            continue;
        };
        let device = &model_with_devices(&app, "thermo", 1).await[0];
        let cases = [
            ("", 400, "partition_size is required"),
            ("?partition_size=abc", 400, "whole number"),
            (
                "?partition_size=4096",
                400,
                "NVS partition size must be at least 12288 bytes (12KB)",
            ),
            (
                "?partition_size=12289",
                400,
                "NVS partition size must be a multiple of 4096 bytes (4KB)",
            ),
            (
                "?partition_size=12288",
                400,
                "Provisioning field 'mqtt_url' is missing",
            ),
        ];
        for (query, status, message) in cases {
            let (got, body) = nvs_package(&app, device.id, query).await;
            assert_eq!(got, status, "{query}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains(message),
                "{query}: {body}"
            );
            assert_eq!(body["code"], "VALIDATION_FAILED");
        }
        // A bad size is 400 before the device is looked up; a good size for no device is 404.
        assert_eq!(
            nvs_package(&app, 999_999, "?partition_size=4096").await.0,
            400
        );
        let (status, body) = nvs_package(&app, 999_999, "?partition_size=12288").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("Device 999999 was not found"))
        );
        let (status, body) = iot_get(&app, "/api/iot/provisioning", &device.credential).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "Provisioning field 'mqtt_url' is missing");
        assert!(
            pending_hash(&app, device.id).await.is_none(),
            "a refused request minted a secret"
        );
        app.stop().await;
    }
    let Some(app) = spawn_app(Stack::Embedded, "provisioning_base_url").await else {
        return;
    };
    let device = &model_with_devices(&app, "thermo", 1).await[0];
    let (status, body) = iot_get(&app, "/api/iot/provisioning", &device.credential).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Provisioning field 'base_url' is missing"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_replaced_pending_secret_is_refused_by_a_process_whose_cache_still_names_it() {
    let mut overrides: Vec<(&str, &str)> = PROVISIONING.to_vec();
    overrides.push(("DEVICE_LOOKUP_CACHE_SECONDS", "30"));
    for stack in ALL_STACKS {
        let Some((a, b)) = spawn_twins(stack, "replaced_pending", &overrides).await else {
            continue;
        };
        let devices = model_with_devices(&a, "thermo", 2).await;
        // One device tries its replaced secret at the token endpoint, the other on a device
        // call: each is the first use, while process B's cache still names that secret.
        for (device, at_token_endpoint) in [(&devices[0], true), (&devices[1], false)] {
            let (status, package) = iot_get(&a, "/api/iot/provisioning", &device.credential).await;
            assert_eq!(status, 200, "{package}");
            let replaced = package["client_secret"].as_str().unwrap().to_string();
            // B reads the credential now (current secret, pending `replaced`) and keeps it.
            assert_eq!(
                iot_get(&b, "/api/iot/config", &device.credential).await.0,
                200
            );
            // The device asks A again with its current secret: the new pending secret replaces
            // the first (an admin's package would keep it valid, see `rotation.rs`).
            let (status, body) = iot_get(&a, "/api/iot/provisioning", &device.credential).await;
            assert_eq!(status, 200, "{body}");

            if at_token_endpoint {
                let (status, body, _) = token(&b, &client_id("thermo", device), &replaced).await;
                assert_eq!(
                    (status, body["error"].as_str()),
                    (401, Some("invalid_client")),
                    "{stack:?}: a token for a replaced secret: {body}"
                );
            } else {
                let with_replaced = format!("{}.{replaced}", device.key);
                let (status, body) = iot_get(&b, "/api/iot/config", &with_replaced).await;
                assert_eq!(status, 401, "{stack:?}: a replaced secret accepted: {body}");
            }
            // The current secret still works, and nothing was promoted.
            assert_eq!(
                iot_get(&b, "/api/iot/config", &device.credential).await.0,
                200
            );
        }
        a.stop().await;
        b.stop().await;
    }
}

/// A secret an admin replaced (a leak) cannot be turned into a fresh one through a process whose
/// lookup cache still names it: the device's package request proves the old secret, and the
/// mint checks that it is still the device's. Without the check the holder of the leaked secret
/// got a pending secret that its first use made current, locking the real device out.
#[tokio::test]
async fn a_replaced_secret_cannot_mint_a_package_through_a_process_that_still_caches_it() {
    let mut overrides: Vec<(&str, &str)> = PROVISIONING.to_vec();
    overrides.push(("DEVICE_LOOKUP_CACHE_SECONDS", "30"));
    for stack in ALL_STACKS {
        let Some((a, b)) = spawn_twins(stack, "replaced_mints_nothing", &overrides).await else {
            continue;
        };
        let device = &model_with_devices(&a, "thermo", 1).await[0];
        // B reads the credential now and keeps it.
        assert_eq!(
            iot_get(&b, "/api/iot/config", &device.credential).await.0,
            200
        );
        // The admin replaces the leaked secret through A.
        let (status, body) = a.replace_device_secret(device.id).await;
        assert_eq!(status, 200, "{body}");
        let replacement = format!("{}.{}", device.key, body["device_secret"].as_str().unwrap());

        let (status, body) = iot_get(&b, "/api/iot/provisioning", &device.credential).await;
        assert_eq!(
            status, 401,
            "{stack:?}: a replaced secret minted a package: {body}"
        );
        assert_eq!(pending_hash(&a, device.id).await, None, "{stack:?}");
        // The replacement still mints one.
        let (status, body) = iot_get(&b, "/api/iot/provisioning", &replacement).await;
        assert_eq!(status, 200, "{stack:?}: {body}");
        a.stop().await;
        b.stop().await;
    }
}
