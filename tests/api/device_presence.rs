//! What devices run (SPEC §15): `running_firmware_version` and `last_seen_at` on device
//! responses, from the `firmware_version` of core-dump uploads and the `X-Firmware-Version`
//! header of any device request; invalid values are ignored, never a failed request. Written in
//! the background (`src/presence.rs`), so the tests wait for the flush.

use std::time::Duration;

use serde_json::Value;

use crate::coredumps::*;
use crate::fleet::device_of;
use crate::helpers::*;

/// Waits until the device's `field` is `want` and returns the device.
async fn device_shows(app: &TestApp, id: i64, field: &str, want: &Value) -> Value {
    let shown = eventually(Duration::from_secs(10), || async {
        &app.get_device(id).await.1[field] == want
    })
    .await;
    let (_, device) = app.get_device(id).await;
    assert!(shown, "{field} is not {want}: {device}");
    device
}

#[tokio::test]
async fn devices_report_what_they_run_with_the_header_on_any_request_and_with_uploads() {
    for_each_stack("device_presence", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let quiet = device_of(app, device.model_id).await;
        let (_, fresh) = app.get_device(device.id).await;
        assert_eq!(fresh["running_firmware_version"], Value::Null, "{fresh}");
        assert_eq!(fresh["last_seen_at"], Value::Null);

        // A request without the header: seen, version unknown.
        let response = app.iot_config(&device.credential).await;
        assert_eq!(response.status(), 200);
        let seen = eventually(Duration::from_secs(10), || async {
            app.get_device(device.id).await.1["last_seen_at"].is_string()
        })
        .await;
        let (_, shown) = app.get_device(device.id).await;
        assert!(seen, "never seen: {shown}");
        assert!(
            shown["last_seen_at"].as_str().unwrap().ends_with('Z'),
            "{shown}"
        );
        assert_eq!(shown["running_firmware_version"], Value::Null);

        // The header on a config request, then on an OTA request (404: no firmware yet; the
        // device was still heard from).
        let response = app
            .iot_config_with(&device.credential, &[("x-firmware-version", "3.1.4")])
            .await;
        assert_eq!(response.status(), 200);
        device_shows(app, device.id, "running_firmware_version", &"3.1.4".into()).await;
        let response = app
            .iot_firmware(&device.credential, &[("x-firmware-version", "3.1.5-rc.1")])
            .await;
        assert_eq!(response.status(), 404);
        device_shows(
            app,
            device.id,
            "running_firmware_version",
            &"3.1.5-rc.1".into(),
        )
        .await;

        // Invalid versions are ignored, and the request succeeds.
        for bad in ["../etc", "a/b", &"9".repeat(51), "1%20", ".."] {
            let response = app
                .iot_config_with(&device.credential, &[("x-firmware-version", bad)])
                .await;
            assert_eq!(response.status(), 200, "{bad}");
        }
        // A request without the header keeps the version.
        app.iot_config(&device.credential).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, shown) = app.get_device(device.id).await;
        assert_eq!(shown["running_firmware_version"], "3.1.5-rc.1", "{shown}");

        // An upload says which version the device runs.
        let (status, body) = upload(
            app,
            &device,
            "chip=esp32&firmware_version=4.0.0",
            b"not a dump".to_vec(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        device_shows(app, device.id, "running_firmware_version", &"4.0.0".into()).await;

        // An upload from a build that names itself (a rolled-back device uploading the dump its
        // newer build saved): the header says what it runs, not the dump.
        let response = app
            .device_request(
                reqwest::Method::POST,
                "/api/iot/coredump?chip=esp32&firmware_version=5.0.0",
                &device.credential,
            )
            .header("x-firmware-version", "4.0.1")
            .body(b"saved by 5.0.0".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        device_shows(app, device.id, "running_firmware_version", &"4.0.1".into()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, shown) = app.get_device(device.id).await;
        assert_eq!(shown["running_firmware_version"], "4.0.1", "{shown}");

        // The list shows it too; a device that never called shows nothing.
        let (_, list) = app.list_devices().await;
        let listed = |id: i64| {
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id)
                .unwrap()
                .clone()
        };
        assert_eq!(listed(device.id)["running_firmware_version"], "4.0.1");
        assert!(listed(device.id)["last_seen_at"].is_string());
        assert_eq!(listed(quiet.id)["running_firmware_version"], Value::Null);
        assert_eq!(listed(quiet.id)["last_seen_at"], Value::Null);
    })
    .await;
}

#[tokio::test]
async fn an_older_observation_written_late_never_replaces_a_newer_one() {
    for_each_stack("device_presence_order", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let db = app.db();
        let newer = iotsupport::db::now();
        let older = newer - chrono::Duration::seconds(30);
        iotsupport::db::devices::record_presence(db, device.id, newer, Some("2.0"))
            .await
            .unwrap();
        // Another process's older observation, flushed after: neither field goes back.
        iotsupport::db::devices::record_presence(db, device.id, older, Some("1.0"))
            .await
            .unwrap();
        // A newer one without a version keeps the version.
        let newest = newer + chrono::Duration::seconds(1);
        iotsupport::db::devices::record_presence(db, device.id, newest, None)
            .await
            .unwrap();
        let (_, shown) = app.get_device(device.id).await;
        assert_eq!(shown["running_firmware_version"], "2.0", "{shown}");
        let at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(shown["last_seen_at"].clone()).unwrap();
        assert_eq!(at, newest);
    })
    .await;
}

/// A version report flushed after another process wrote a newer `last_seen_at` from a request
/// without a version still lands, if it is the newest version report: versions are compared
/// with the time of the version known, not with the last time the device was seen. It was lost
/// until the device's next report.
#[tokio::test]
async fn a_version_report_is_not_lost_behind_a_newer_report_without_one() {
    for_each_stack("device_presence_version_order", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let db = app.db();
        let t0 = iotsupport::db::now();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        iotsupport::db::devices::record_presence(db, device.id, at(0), Some("1.0"))
            .await
            .unwrap();
        // Process B: a poll without a version at 102, flushed first.
        iotsupport::db::devices::record_presence(db, device.id, at(102), None)
            .await
            .unwrap();
        // Process A: a core-dump upload that reported 1.1 at 100, flushed after.
        iotsupport::db::devices::record_presence(db, device.id, at(100), Some("1.1"))
            .await
            .unwrap();
        // An older version report flushed later still changes nothing.
        iotsupport::db::devices::record_presence(db, device.id, at(50), Some("0.9"))
            .await
            .unwrap();
        let (_, shown) = app.get_device(device.id).await;
        assert_eq!(shown["running_firmware_version"], "1.1", "{shown}");
        let seen: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(shown["last_seen_at"].clone()).unwrap();
        assert_eq!(seen, at(102));
    })
    .await;
}
