//! Fleet credential rotation (SPEC §13): every transition of the original's state machine, its
//! status and dashboard fields, exact completion by secret and by token, timeouts that never lock
//! a device out, one PENDING device and one timeout across two processes, the schedule and the
//! `rotation-job` command.

use std::time::Duration;

use serde_json::Value;

use crate::coredumps::TestDevice;
use crate::credentials_support::*;
use crate::events::SseReader;
use crate::fleet::{create_model, device_of};
use crate::helpers::*;

/// A rotation worker that never runs on its own during the test (the test steps it).
const QUIET: [(&str, &str); 1] = [("WORKER_POLL_SECONDS", "3600")];

async fn post(app: &TestApp, path: &str) -> (u16, Value) {
    call(app, http::Method::POST, path, None).await
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    call(app, http::Method::GET, path, None).await
}

async fn set_active(app: &TestApp, id: i64, active: bool) {
    let (status, body) = call(
        app,
        http::Method::PUT,
        &format!("/api/devices/{id}"),
        Some(serde_json::json!({"config": "{}", "active": active})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn states(app: &TestApp, devices: &[TestDevice]) -> Vec<String> {
    let mut out = Vec::new();
    for d in devices {
        out.push(rotation_state(app, d.id).await);
    }
    out
}

async fn events_of(app: &TestApp, kind: &str) -> i64 {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE type = $1"
    )
    .bind(kind)
    .fetch_one(p)
    .await)
    .unwrap()
}

/// Provisions `device` through the device API (as after the MQTT nudge) and returns the
/// `key.secret` credential of the package's pending secret.
async fn fetch_package(app: &TestApp, device: &TestDevice, with: &str) -> (String, String) {
    let (status, package) = iot_get(app, "/api/iot/provisioning", with).await;
    assert_eq!(status, 200, "{package}");
    let secret = package["client_secret"].as_str().unwrap().to_string();
    (format!("{}.{secret}", device.key), secret)
}

#[tokio::test]
async fn the_fleet_trigger_queues_active_ok_devices_and_starts_one() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(stack, "rotation_trigger", &QUIET).await else {
            continue;
        };
        let (status, empty) = get(&app, "/api/rotation/status").await;
        assert_eq!(status, 200);
        for state in ["OK", "QUEUED", "PENDING", "TIMEOUT"] {
            assert_eq!(empty["counts_by_state"][state], 0, "{empty}");
        }
        assert_eq!(empty["pending_device_id"], Value::Null);
        assert_eq!(empty["inactive"], 0);
        let (_, none) = post(&app, "/api/rotation/trigger").await;
        assert_eq!(none["queued_count"], 0);

        let devices = model_with_devices(&app, "thermo", 3).await;
        set_active(&app, devices[2].id, false).await;
        let (_, status) = get(&app, "/api/rotation/status").await;
        assert_eq!(
            (
                status["counts_by_state"]["OK"].as_i64(),
                status["inactive"].as_i64()
            ),
            (Some(3), Some(1))
        );

        let (status, body) = post(&app, "/api/rotation/trigger").await;
        assert_eq!(
            (status, body["queued_count"].as_i64()),
            (200, Some(2)),
            "{body}"
        );
        let now = states(&app, &devices).await;
        assert_eq!(now.iter().filter(|s| *s == "PENDING").count(), 1, "{now:?}");
        assert_eq!(now.iter().filter(|s| *s == "QUEUED").count(), 1, "{now:?}");
        assert_eq!(now[2], "OK", "an inactive device was queued");
        let (_, status) = get(&app, "/api/rotation/status").await;
        let pending = devices
            .iter()
            .find(|d| status["pending_device_id"] == d.id)
            .expect("pending id");
        assert!(device_json(&app, pending.id).await["last_rotation_attempt_at"].is_string());

        // The filter and the dashboard.
        let (_, listed) = get(&app, "/api/devices?rotation_state=QUEUED").await;
        assert_eq!(listed["count"], 1);
        assert_eq!(get(&app, "/api/devices?rotation_state=BOGUS").await.0, 400);
        let (_, dash) = get(&app, "/api/rotation/dashboard").await;
        assert_eq!(dash["counts"]["healthy"], 2, "{dash}");
        assert_eq!(dash["counts"]["inactive"], 1, "{dash}");
        assert_eq!(dash["inactive"][0]["active"], false);
        assert_eq!(dash["healthy"][0]["device_model_code"], "thermo");
        assert!(dash["healthy"][0]["days_since_rotation"].is_null());
        assert!(events_of(&app, "rotation-updated").await >= 2);
        assert_eq!(events_of(&app, "device_rotation_pending").await, 1);
        app.stop().await;
    }
}

#[tokio::test]
async fn single_device_rotation_queues_even_inactive_devices_and_reports_already_pending() {
    let Some(app) = app_with_provisioning(Stack::Embedded, "rotation_single", &QUIET).await else {
        return;
    };
    let devices = model_with_devices(&app, "thermo", 2).await;
    set_active(&app, devices[0].id, false).await;
    let (status, body) = post(&app, &format!("/api/devices/{}/rotate", devices[0].id)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("queued")));
    // No other device was PENDING: the queued one started at once.
    assert_eq!(rotation_state(&app, devices[0].id).await, "PENDING");
    let (_, again) = post(&app, &format!("/api/devices/{}/rotate", devices[0].id)).await;
    assert_eq!(again["status"], "already_pending");
    let (_, other) = post(&app, &format!("/api/devices/{}/rotate", devices[1].id)).await;
    assert_eq!(other["status"], "queued");
    assert_eq!(
        rotation_state(&app, devices[1].id).await,
        "QUEUED",
        "two devices PENDING"
    );
    let (_, queued_again) = post(&app, &format!("/api/devices/{}/rotate", devices[1].id)).await;
    assert_eq!(queued_again["status"], "already_pending");
    let (status, body) = post(&app, "/api/devices/999999/rotate").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("Device 999999 was not found"))
    );
    app.stop().await;
}

#[tokio::test]
async fn completion_is_exact_by_secret_or_by_token_and_chains_to_the_next_device() {
    for stack in ALL_STACKS {
        // The event stream polls SQLite at the worker interval: keep it short here.
        let Some(app) = app_with_provisioning(stack, "rotation_complete", &[]).await else {
            continue;
        };
        let devices = model_with_devices(&app, "thermo", 2).await;
        let mut sse = SseReader::open(&app).await;
        post(&app, "/api/rotation/trigger").await;
        let (_, status) = get(&app, "/api/rotation/status").await;
        let first = devices
            .iter()
            .find(|d| status["pending_device_id"] == d.id)
            .unwrap()
            .clone();
        let second = devices.iter().find(|d| d.id != first.id).unwrap().clone();

        // Authenticating with the current secret completes nothing; neither does fetching the
        // package (it only mints the pending secret).
        let (new_credential, _) = fetch_package(&app, &first, &first.credential).await;
        assert_eq!(
            iot_get(&app, "/api/iot/config", &first.credential).await.0,
            200
        );
        assert_eq!(rotation_state(&app, first.id).await, "PENDING");

        // The first request with the new secret completes it, on any device endpoint.
        assert_eq!(
            iot_get(&app, "/api/iot/firmware-version", &new_credential)
                .await
                .0,
            200
        );
        let done = device_json(&app, first.id).await;
        assert_eq!(done["rotation_state"], "OK", "{stack:?}: {done}");
        assert!(done["last_rotation_completed_at"].is_string());
        assert_eq!(
            iot_get(&app, "/api/iot/config", &first.credential).await.0,
            401,
            "old secret still works"
        );
        assert_eq!(
            rotation_state(&app, second.id).await,
            "PENDING",
            "the chain did not go on"
        );

        // The second device completes through a token minted with its new secret.
        let (_, secret) = fetch_package(&app, &second, &second.credential).await;
        let token = token_ok(&app, &client_id("thermo", &second), &secret).await;
        assert_eq!(
            rotation_state(&app, second.id).await,
            "OK",
            "minting with the pending secret completes"
        );
        assert_eq!(iot_get(&app, "/api/iot/config", &token).await.0, 200);

        // rotation-updated travels in the stream's message format.
        let mut kinds = Vec::new();
        while let Some(message) = sse.next(Duration::from_secs(3)).await {
            kinds.push(message["type"].as_str().unwrap_or("").to_string());
            if message["type"] == "rotation-updated" {
                assert_eq!(message["payload"], serde_json::json!({}));
            }
            if kinds.iter().filter(|k| *k == "rotation-updated").count() >= 3 {
                break;
            }
        }
        assert!(
            kinds.iter().filter(|k| *k == "rotation-updated").count() >= 3,
            "{kinds:?}"
        );
        let (_, status) = get(&app, "/api/rotation/status").await;
        assert_eq!(status["counts_by_state"]["OK"], 2, "{status}");
        assert!(status["last_rotation_completed_at"].is_string());
        app.stop().await;
    }
}

#[tokio::test]
async fn a_timed_out_device_keeps_its_pending_secret_while_another_rotates() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(
            stack,
            "rotation_timeout",
            &[
                ("WORKER_POLL_SECONDS", "3600"),
                ("ROTATION_TIMEOUT_SECONDS", "1"),
            ],
        )
        .await
        else {
            continue;
        };
        let devices = model_with_devices(&app, "thermo", 1).await;
        let late = &devices[0];
        post(&app, &format!("/api/devices/{}/rotate", late.id)).await;
        assert_eq!(rotation_state(&app, late.id).await, "PENDING");
        let (new_credential, _) = fetch_package(&app, late, &late.credential).await;

        tokio::time::sleep(Duration::from_millis(1100)).await;
        let report = rotation_step(&app).await;
        assert_eq!(report.timeouts_processed, 1);
        assert_eq!(
            report.device_rotated, None,
            "retried sooner than the timeout"
        );
        assert_eq!(rotation_state(&app, late.id).await, "TIMEOUT");

        // Another device rotates meanwhile (the order of retries is in
        // `queued_devices_rotate_oldest_secret_first_and_a_due_retry_waits_for_all_of_them`).
        let more = model_with_devices(&app, "lamp", 1).await;
        post(&app, &format!("/api/devices/{}/rotate", more[0].id)).await;
        assert_eq!(rotation_state(&app, more[0].id).await, "PENDING");

        // The device reports back late with the new secret: no lockout, it completes.
        assert_eq!(
            iot_get(&app, "/api/iot/config", &new_credential).await.0,
            200,
            "{stack:?}: locked out"
        );
        let done = device_json(&app, late.id).await;
        assert_eq!(done["rotation_state"], "OK", "{done}");
        assert!(done["last_rotation_completed_at"].is_string());
        app.stop().await;
    }
}

/// An admin's provisioning package for a device in the middle of a rotation, which may have
/// stored the rotation's pending secret already, keeps that secret valid: a package that is never
/// flashed locks nobody out. Whichever pending secret is used first becomes current; the other
/// goes with the old one.
#[tokio::test]
async fn an_admins_package_mid_rotation_leaves_the_device_the_pending_secret_it_stored() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(
            stack,
            "rotation_admin_package",
            &[("WORKER_POLL_SECONDS", "3600")],
        )
        .await
        else {
            continue;
        };
        let devices = model_with_devices(&app, "thermo", 2).await;
        for (device, stored_first) in [(&devices[0], true), (&devices[1], false)] {
            post(&app, &format!("/api/devices/{}/rotate", device.id)).await;
            assert_eq!(rotation_state(&app, device.id).await, "PENDING");
            let (stored, _) = fetch_package(&app, device, &device.credential).await;
            let (status, package) = nvs_package(&app, device.id, "?partition_size=12288").await;
            assert_eq!(status, 200, "{package}");
            let values = nvs_values(&package);
            let flashed = format!("{}.{}", device.key, value_of(&values, "client_secret"));
            let (used, other) = if stored_first {
                (stored, flashed)
            } else {
                (flashed, stored)
            };
            assert_eq!(
                iot_get(&app, "/api/iot/config", &used).await.0,
                200,
                "{stack:?}: locked out (stored first: {stored_first})"
            );
            assert_eq!(rotation_state(&app, device.id).await, "OK");
            for gone in [&other, &device.credential] {
                assert_eq!(
                    iot_get(&app, "/api/iot/config", gone).await.0,
                    401,
                    "{stack:?}: a secret outlived the promotion (stored first: {stored_first})"
                );
            }
        }
        app.stop().await;
    }
}

/// The order of rotations: `QUEUED` devices by the oldest `secret_created_at` first, and a
/// `TIMEOUT` device, even one whose retry is due, only once no device is queued.
#[tokio::test]
async fn queued_devices_rotate_oldest_secret_first_and_a_due_retry_waits_for_all_of_them() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(
            stack,
            "rotation_order",
            &[
                ("WORKER_POLL_SECONDS", "3600"),
                ("ROTATION_TIMEOUT_SECONDS", "1"),
            ],
        )
        .await
        else {
            continue;
        };
        let devices = model_with_devices(&app, "thermo", 3).await;
        let (late, newer, older) = (&devices[0], &devices[1], &devices[2]);
        post(&app, &format!("/api/devices/{}/rotate", late.id)).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(rotation_step(&app).await.timeouts_processed, 1);
        assert_eq!(rotation_state(&app, late.id).await, "TIMEOUT");
        // Its retry is long due, and two devices are queued, `older` with the older secret.
        let hour_ago = iotsupport::db::now() - chrono::Duration::hours(1);
        let day_ago = iotsupport::db::now() - chrono::Duration::days(1);
        for (sql, id, at) in [
            (
                "UPDATE devices SET rotation_timed_out_at = $2 WHERE id = $1",
                late.id,
                hour_ago,
            ),
            (
                "UPDATE devices SET rotation_state = 'QUEUED', secret_created_at = $2 WHERE id = $1",
                newer.id,
                hour_ago,
            ),
            (
                "UPDATE devices SET rotation_state = 'QUEUED', secret_created_at = $2 WHERE id = $1",
                older.id,
                day_ago,
            ),
        ] {
            iotsupport::on_pool!(app.db(), |p| sqlx::query(sql)
                .bind(id)
                .bind(at)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
            .unwrap();
        }

        let report = rotation_step(&app).await;
        assert_eq!(
            report.device_rotated.as_deref(),
            Some(older.key.as_str()),
            "{stack:?}"
        );
        assert_eq!(
            states(&app, &devices).await,
            ["TIMEOUT", "QUEUED", "PENDING"]
        );
        // Each completion starts the next: the other queued device, then the retry.
        let (credential, _) = fetch_package(&app, older, &older.credential).await;
        assert_eq!(iot_get(&app, "/api/iot/config", &credential).await.0, 200);
        assert_eq!(states(&app, &devices).await, ["TIMEOUT", "PENDING", "OK"]);
        let (credential, _) = fetch_package(&app, newer, &newer.credential).await;
        assert_eq!(iot_get(&app, "/api/iot/config", &credential).await.0, 200);
        assert_eq!(states(&app, &devices).await, ["PENDING", "OK", "OK"]);
        app.stop().await;
    }
}

/// A timed-out device that an admin queued again (while another device is pending) and that then
/// reports back with the secret of the rotation that timed out has renewed its secret: the
/// rotation is done (`OK`, completion time), not run again later with the dashboard showing the
/// old completion time meanwhile.
#[tokio::test]
async fn a_queued_device_that_uses_its_pending_secret_completes_its_rotation() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(
            stack,
            "rotation_queued_completes",
            &[
                ("WORKER_POLL_SECONDS", "3600"),
                ("ROTATION_TIMEOUT_SECONDS", "1"),
            ],
        )
        .await
        else {
            continue;
        };
        let devices = model_with_devices(&app, "thermo", 2).await;
        let (late, other) = (&devices[0], &devices[1]);
        post(&app, &format!("/api/devices/{}/rotate", late.id)).await;
        let (new_credential, _) = fetch_package(&app, late, &late.credential).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(rotation_step(&app).await.timeouts_processed, 1);
        assert_eq!(rotation_state(&app, late.id).await, "TIMEOUT");
        post(&app, &format!("/api/devices/{}/rotate", other.id)).await;
        assert_eq!(rotation_state(&app, other.id).await, "PENDING");
        post(&app, &format!("/api/devices/{}/rotate", late.id)).await;
        assert_eq!(rotation_state(&app, late.id).await, "QUEUED");

        assert_eq!(
            iot_get(&app, "/api/iot/config", &new_credential).await.0,
            200
        );
        let done = device_json(&app, late.id).await;
        assert_eq!(done["rotation_state"], "OK", "{stack:?}: {done}");
        assert!(done["last_rotation_completed_at"].is_string(), "{done}");
        assert_eq!(rotation_state(&app, other.id).await, "PENDING");
        app.stop().await;
    }
}

/// A `PENDING` device with no attempt time (an adopted row the original never wrote that way, or
/// one edited by hand) times out like any other instead of blocking every rotation for good.
#[tokio::test]
async fn a_pending_device_without_an_attempt_time_times_out() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(
            stack,
            "rotation_pending_no_attempt",
            &[("WORKER_POLL_SECONDS", "3600")],
        )
        .await
        else {
            continue;
        };
        let devices = model_with_devices(&app, "thermo", 2).await;
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE devices SET rotation_state = 'PENDING', last_rotation_attempt_at = NULL
             WHERE id = $1"
        )
        .bind(devices[0].id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        post(&app, &format!("/api/devices/{}/rotate", devices[1].id)).await;
        assert_eq!(rotation_state(&app, devices[1].id).await, "QUEUED");
        let report = rotation_step(&app).await;
        assert_eq!(report.timeouts_processed, 1, "{stack:?}");
        assert_eq!(rotation_state(&app, devices[0].id).await, "TIMEOUT");
        assert_eq!(rotation_state(&app, devices[1].id).await, "PENDING");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_timeout_is_retried_no_sooner_than_the_timeout_after_it() {
    let Some(app) = app_with_provisioning(
        Stack::Embedded,
        "rotation_retry",
        &[
            ("WORKER_POLL_SECONDS", "3600"),
            ("ROTATION_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await
    else {
        return;
    };
    let device = &model_with_devices(&app, "thermo", 1).await[0];
    post(&app, &format!("/api/devices/{}/rotate", device.id)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(rotation_step(&app).await.timeouts_processed, 1);
    assert_eq!(rotation_step(&app).await.device_rotated, None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        rotation_step(&app).await.device_rotated,
        Some(device.key.clone())
    );
    assert_eq!(rotation_state(&app, device.id).await, "PENDING");
    app.stop().await;
}

#[tokio::test]
async fn two_processes_never_have_two_devices_pending_and_time_a_device_out_once() {
    for stack in ALL_STACKS {
        let Some((a, b)) = spawn_twins(
            stack,
            "rotation_twins",
            &[
                ("WORKER_POLL_SECONDS", "3600"),
                ("ROTATION_TIMEOUT_SECONDS", "1"),
            ],
        )
        .await
        else {
            continue;
        };
        let devices = model_with_devices(&a, "thermo", 6).await;
        // Both processes queue devices and start rotations at once, many times over.
        for round in 0..3 {
            let paths: Vec<String> = devices
                .iter()
                .map(|d| format!("/api/devices/{}/rotate", d.id))
                .collect();
            let mut calls = Vec::new();
            for (i, path) in paths.iter().enumerate() {
                let app = if i % 2 == 0 { &a } else { &b };
                calls.push(post(app, path));
            }
            let (ra, rb) = tokio::join!(
                futures::future::join_all(calls),
                futures::future::join(
                    post(&a, "/api/rotation/trigger"),
                    post(&b, "/api/rotation/trigger")
                ),
            );
            assert!(ra.iter().all(|(s, _)| *s == 200), "{ra:?}");
            assert_eq!((rb.0 .0, rb.1 .0), (200, 200));
            let pending: i64 = iotsupport::on_pool!(a.db(), |p| sqlx::query_scalar(
                "SELECT COUNT(*) FROM devices WHERE rotation_state = 'PENDING'"
            )
            .fetch_one(p)
            .await)
            .unwrap();
            assert_eq!(pending, 1, "{stack:?} round {round}");
        }
        // After the timeout both processes look for timeouts at once: one of them times it out.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let settings = a.state.config.rotation.clone();
        let (ta, tb) = tokio::join!(
            iotsupport::credentials::rotation::process_timeouts(a.db(), &settings),
            iotsupport::credentials::rotation::process_timeouts(b.db(), &settings),
        );
        let (ta, tb) = (ta.unwrap(), tb.unwrap());
        assert_eq!(
            ta.0.len() + tb.0.len(),
            1,
            "{stack:?}: {:?} {:?}",
            ta.0,
            tb.0
        );
        assert_eq!(
            usize::from(ta.1.is_some()) + usize::from(tb.1.is_some()),
            1,
            "exactly one next device"
        );
        assert_rotation_counts_match(&a, "two processes").await;
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn replacing_a_secret_ends_a_rotation_as_completed() {
    let Some(app) = app_with_provisioning(Stack::Embedded, "rotation_replace", &QUIET).await else {
        return;
    };
    let devices = model_with_devices(&app, "thermo", 2).await;
    post(&app, &format!("/api/devices/{}/rotate", devices[0].id)).await;
    post(&app, &format!("/api/devices/{}/rotate", devices[1].id)).await;
    let (pending_credential, _) = fetch_package(&app, &devices[0], &devices[0].credential).await;
    let (status, body) = post(&app, &format!("/api/devices/{}/secret", devices[0].id)).await;
    assert_eq!(status, 200, "{body}");
    let fresh = format!(
        "{}.{}",
        devices[0].key,
        body["device_secret"].as_str().unwrap()
    );
    let done = device_json(&app, devices[0].id).await;
    assert_eq!(done["rotation_state"], "OK");
    assert!(done["last_rotation_completed_at"].is_string());
    assert_eq!(
        rotation_state(&app, devices[1].id).await,
        "PENDING",
        "the chain did not go on"
    );
    assert_eq!(
        iot_get(&app, "/api/iot/config", &pending_credential)
            .await
            .0,
        401,
        "the pending secret survived"
    );
    assert_eq!(
        iot_get(&app, "/api/iot/config", &devices[0].credential)
            .await
            .0,
        401
    );
    assert_eq!(iot_get(&app, "/api/iot/config", &fresh).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_schedule_queues_the_fleet_once_per_tick_and_the_rotation_job_prints_the_originals_lines(
) {
    let Some(app) = app_with_provisioning(
        Stack::Embedded,
        "rotation_schedule",
        &[
            ("WORKER_POLL_SECONDS", "3600"),
            // Yearly: with a tick every minute, two steps that straddle a minute boundary each
            // (rightly) trigger their own tick, and "once per tick" cannot be checked.
            ("ROTATION_CRON", "0 0 1 1 *"),
        ],
    )
    .await
    else {
        return;
    };
    let devices = model_with_devices(&app, "thermo", 2).await;
    // The first run records a baseline instead of rotating the fleet at once.
    assert!(!rotation_step(&app).await.scheduled_triggered);
    assert_eq!(states(&app, &devices).await, ["OK", "OK"]);
    // A tick (1 January) has passed since the (now older) baseline: one of two processes' steps
    // queues.
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "UPDATE settings SET value = '2025-06-01T00:00:00' WHERE key = 'LAST_SCHEDULED_AT'"
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let settings = app.state.config.rotation.clone();
    let (x, y) = tokio::join!(
        iotsupport::credentials::rotation::run_schedule(app.db(), &settings),
        iotsupport::credentials::rotation::run_schedule(app.db(), &settings),
    );
    assert_eq!(
        u8::from(x.unwrap()) + u8::from(y.unwrap()),
        1,
        "the tick ran twice or never"
    );
    let mut now = states(&app, &devices).await;
    now.sort();
    assert_eq!(now, ["PENDING", "QUEUED"]);
    let (_, status) = get(&app, "/api/rotation/status").await;
    assert!(
        status["next_scheduled_rotation"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{status}"
    );

    // The CLI, as a CronJob runs it.
    let text = rotation_job(&app, &[("ROTATION_CRON", "0 8 * * 6#1")]);
    assert!(text.starts_with("Rotation job completed\n  Timeouts processed: 0\n  Device rotated: none\n  Scheduled triggered: False"), "{text}");
    app.stop().await;
}

/// The counters of `device_rotation_counts` (migration 16, kept by triggers) hold exactly what a
/// count of the devices says.
async fn assert_rotation_counts_match(app: &TestApp, when: &str) {
    let rows = async |sql: &'static str| -> Vec<(bool, String, i64)> {
        iotsupport::on_pool!(app.db(), |p| sqlx::query_as(sql).fetch_all(p).await).unwrap()
    };
    let kept = rows(
        "SELECT active, rotation_state, CAST(SUM(devices) AS BIGINT) FROM device_rotation_counts
         GROUP BY active, rotation_state HAVING SUM(devices) <> 0 ORDER BY active, rotation_state",
    )
    .await;
    let counted = rows(
        "SELECT active, rotation_state, COUNT(*) FROM devices
         GROUP BY active, rotation_state ORDER BY active, rotation_state",
    )
    .await;
    assert_eq!(kept, counted, "{when}");
}

#[tokio::test]
async fn rotation_counts_follow_every_change_of_the_devices_also_concurrent_ones() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(stack, "rotation_counts", &QUIET).await else {
            continue;
        };
        assert_rotation_counts_match(&app, "empty").await;
        let devices = model_with_devices(&app, "thermo", 5).await;
        assert_rotation_counts_match(&app, "created").await;
        set_active(&app, devices[4].id, false).await;
        assert_rotation_counts_match(&app, "deactivated").await;
        // An update that changes neither state nor activity (the config form) counts nothing.
        set_active(&app, devices[3].id, true).await;
        assert_rotation_counts_match(&app, "updated").await;
        let (_, queued) = post(&app, "/api/rotation/trigger").await;
        assert_eq!(queued["queued_count"], 4, "{queued}");
        assert_rotation_counts_match(&app, "the fleet queued").await;
        let (_, status) = get(&app, "/api/rotation/status").await;
        assert_eq!(
            (
                status["counts_by_state"]["PENDING"].as_i64(),
                status["counts_by_state"]["QUEUED"].as_i64(),
                status["counts_by_state"]["OK"].as_i64(),
                status["inactive"].as_i64()
            ),
            (Some(1), Some(3), Some(1), Some(1)),
            "{status}"
        );
        let pending = status["pending_device_id"]
            .as_i64()
            .expect("a pending device");
        let other = devices
            .iter()
            .find(|d| d.id != pending && d.id != devices[4].id)
            .expect("a queued device");
        let (code, body) = call(
            &app,
            http::Method::DELETE,
            &format!("/api/devices/{}", other.id),
            None,
        )
        .await;
        assert!(code == 200 || code == 204, "{code} {body}");
        assert_rotation_counts_match(&app, "deleted").await;
        let (code, body) = post(&app, &format!("/api/devices/{pending}/secret")).await;
        assert!(
            code < 300,
            "replacing the pending device's secret: {code} {body}"
        );
        assert_rotation_counts_match(&app, "secret replaced").await;

        // Many requests at once that create, deactivate, reactivate and delete devices while the
        // fleet is queued and rotated: every one succeeds (no deadlock between the counters'
        // row locks) and the counters still agree.
        let model = create_model(&app, "lamp", None).await;
        let churn = (0..12).map(|i| {
            let app = &app;
            async move {
                let device = device_of(app, model).await;
                set_active(app, device.id, false).await;
                if i % 3 == 0 {
                    post(app, "/api/rotation/trigger").await;
                }
                set_active(app, device.id, true).await;
                if i % 2 == 0 {
                    let (code, body) = call(
                        app,
                        http::Method::DELETE,
                        &format!("/api/devices/{}", device.id),
                        None,
                    )
                    .await;
                    assert!(code == 200 || code == 204, "{code} {body}");
                }
            }
        });
        futures::future::join_all(churn).await;
        assert_rotation_counts_match(&app, "after concurrent changes").await;
        let (_, status) = get(&app, "/api/rotation/status").await;
        let total: i64 = ["OK", "QUEUED", "PENDING", "TIMEOUT"]
            .iter()
            .map(|s| status["counts_by_state"][s].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(total, 4 + 6, "{status}");
        app.stop().await;
    }
}

/// Runs `rotation-job` against the app's database with `env` besides; it must succeed. Its
/// standard output.
fn rotation_job(app: &TestApp, env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_iotsupport"))
        .arg("rotation-job")
        .env_clear()
        .env("DATABASE_URL", app.state.config.database_url.expose())
        .env("LOG_FORMAT", "text")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `rotation-job` as a process whose own clock is `skew_seconds` off, with a 30-minute
/// timeout; returns its standard output.
fn rotation_job_with_clock_skew(app: &TestApp, skew_seconds: &str) -> String {
    rotation_job(
        app,
        &[
            ("ROTATION_TIMEOUT_SECONDS", "1800"),
            ("IOTSUPPORT_TEST_CLOCK_SKEW_SECONDS", skew_seconds),
        ],
    )
}

/// A process whose clock is an hour off (a board without a real-time clock before NTP, a VM
/// resumed from a snapshot) times rotations out by the database's clock, and writes its
/// timestamps on it: an hour ahead it does not time out a device pending for 10 minutes, an hour
/// behind it does time out one pending for 40.
#[tokio::test]
async fn a_process_with_a_wrong_clock_times_rotations_out_by_the_databases_clock() {
    for stack in ALL_STACKS {
        let Some(app) = app_with_provisioning(stack, "rotation_clock_skew", &QUIET).await else {
            continue;
        };
        let device = &model_with_devices(&app, "thermo", 1).await[0];
        let pending_since = async |minutes: i64| {
            let at = iotsupport::db::now() - chrono::Duration::minutes(minutes);
            iotsupport::on_pool!(app.db(), |p| sqlx::query(
                "UPDATE devices SET rotation_state = 'PENDING', last_rotation_attempt_at = $1
                 WHERE id = $2"
            )
            .bind(at)
            .bind(device.id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        };

        pending_since(10).await;
        let text = rotation_job_with_clock_skew(&app, "3600");
        assert!(text.contains("Timeouts processed: 0"), "{stack:?}: {text}");
        assert_eq!(rotation_state(&app, device.id).await, "PENDING");

        pending_since(40).await;
        let text = rotation_job_with_clock_skew(&app, "-3600");
        assert!(text.contains("Timeouts processed: 1"), "{stack:?}: {text}");
        assert_eq!(rotation_state(&app, device.id).await, "TIMEOUT");
        let timed_out_at: chrono::DateTime<chrono::Utc> = iotsupport::on_pool!(app.db(), |p| {
            sqlx::query_scalar("SELECT rotation_timed_out_at FROM devices WHERE id = $1")
                .bind(device.id)
                .fetch_one(p)
                .await
        })
        .unwrap();
        let off = (timed_out_at - chrono::Utc::now()).num_seconds().abs();
        assert!(
            off < 120,
            "{stack:?}: written {off} s off the database's clock"
        );
        app.stop().await;
    }
}
