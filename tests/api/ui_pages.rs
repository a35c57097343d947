//! The web UI's pages through HTTP, on both stacks: each answers 200 HTML with what it is for —
//! the overview's per-model versions and counts, the model's firmware versions and devices, the
//! device's config, credentials and dumps, a parsed dump's structured report, crash groups with
//! their chart, the rotation dashboard — and user data is escaped wherever it appears.

use serde_json::json;

use crate::client::status_and_json;
use crate::coredumps::{put_elf, upload_ok};
use crate::crash_support::{crash_and_parse, crashes, insert_group};
use crate::firmware_support::{sha256_hex, Build};
use crate::fleet::{create_model, device_of};
use crate::helpers::*;
use crate::ui_support::{assert_shows, escaped, page};

const HOSTILE: &str = "<script>alert(1)</script>";

async fn upload(app: &TestApp, model_id: i64, code: &str, build: &Build) {
    let (status, body) = app.upload_firmware(model_id, build.zip(code)).await;
    assert_eq!(status, 200, "{body}");
}

async fn reports_running(app: &TestApp, device_id: i64, version: &str) {
    iotsupport::db::devices::record_presence(
        app.db(),
        device_id,
        iotsupport::db::now(),
        Some(version),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn ui_overview_shows_each_model_with_its_current_and_running_versions() {
    for_each_stack("ui_overview", &[], async |app| {
        let empty = page(app, "/").await;
        assert_shows(
            "the empty overview",
            &empty,
            &["No device models yet", "Create model"],
        );

        let model_id = create_model(app, "sensor", None).await;
        let name = format!("{HOSTILE} Hall");
        let (status, body) = app.update_model(model_id, json!({"name": name})).await;
        assert_eq!(status, 200, "{body}");
        upload(app, model_id, "sensor", &Build::new("1.0.0", "a")).await;
        upload(app, model_id, "sensor", &Build::new("1.1.0", "b")).await;
        let on_new = device_of(app, model_id).await;
        let on_old = device_of(app, model_id).await;
        device_of(app, model_id).await;
        reports_running(app, on_new.id, "1.1.0").await;
        reports_running(app, on_old.id, "1.0.0").await;

        let body = page(app, "/").await;
        assert_shows(
            "the overview",
            &body,
            &[
                &format!("href=\"/models/{model_id}\""),
                &escaped(&name),
                "<code>1.1.0</code> × 1",
                "<code>1.0.0</code> × 1",
                "not reported × 1",
                "<strong>3</strong> devices",
                "<strong>3</strong> healthy",
                "Credential rotation",
            ],
        );
        assert!(!body.contains(HOSTILE), "unescaped model name:\n{body}");
    })
    .await;
}

#[tokio::test]
async fn ui_model_page_lists_versions_with_rollback_devices_and_the_schema_editor() {
    let schema = r#"{"type": "object", "description": "</textarea><b>x</b>"}"#;
    for_each_stack("ui_model", &[], async |app| {
        let model_id = create_model(app, "sensor", Some(schema)).await;
        let old = Build::new("1.0.0", "a");
        let new = Build::new("1.1.0", "b");
        upload(app, model_id, "sensor", &old).await;
        upload(app, model_id, "sensor", &new).await;
        let device = device_of(app, model_id).await;

        let body = page(app, &format!("/models/{model_id}")).await;
        assert_shows(
            "the model page",
            &body,
            &[
                "data-version=\"1.1.0\"",
                "Roll back to this",
                &sha256_hex(&new.bin)[..12],
                "ESP-IDF v5.2.2",
                &format!("/api/device-models/{model_id}/firmware/1.0.0/firmware.elf"),
                &format!("data-upload=\"/api/device-models/{model_id}/firmware\""),
                &format!("href=\"/devices/{}\"", device.id),
                &escaped(schema),
                "Create device",
            ],
        );
        assert!(
            !body.contains("</textarea><b>"),
            "unescaped schema:\n{body}"
        );

        let (status, answer) = app.set_current_firmware(model_id, "1.0.0").await;
        assert_eq!(status, 200, "{answer}");
        let body = page(app, &format!("/models/{model_id}")).await;
        assert_shows(
            "after the rollback",
            &body,
            &["Make current", "id=\"current-version\">1.0.0"],
        );
    })
    .await;
}

#[tokio::test]
async fn ui_device_page_shows_config_credentials_dumps_and_logs_state() {
    let config =
        json!({"deviceName": format!("</textarea>{HOSTILE}"), "deviceEntityId": "sensor.hall"})
            .to_string();
    TestApp::builder("ui_device")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let model_id = create_model(app, "sensor", None).await;
            let (status, created) = app.create_device(model_id, &config).await;
            assert_eq!(status, 201, "{created}");
            let device = crate::client::TestDevice::from_created(&created);
            let dump = upload_ok(app, &device, "1.0.0", b"not really a dump").await;

            let body = page(app, &format!("/devices/{}", device.id)).await;
            assert_shows(
                "the device page",
                &body,
                &[
                    &escaped(&config),
                    "Rotate secret",
                    "Download provisioning package",
                    "state-ok",
                    &format!("href=\"/devices/{}/coredumps/{dump}\"", device.id),
                    "parsing…",
                    "MQTT, which is off",
                    &format!("iotdevice-sensor-{}", device.key),
                ],
            );
            assert!(!body.contains(HOSTILE), "unescaped device name:\n{body}");

            let report = page(app, &format!("/devices/{}/coredumps/{dump}", device.id)).await;
            assert_shows("a pending dump", &report, &["is being parsed"]);
        })
        .await;
}

#[tokio::test]
async fn ui_report_and_crash_group_pages_show_a_real_crash() {
    let Some(crashes) = crashes() else { return };
    for_each_stack("ui_crash", &[], async |app| {
        let model_id = create_model(app, "sensor", None).await;
        let crash = &crashes.abort_v1;
        put_elf(app, "sensor", crash.version, crash.elf.clone()).await;
        let device = device_of(app, model_id).await;
        let dump = crash_and_parse(app, &device, crash).await;
        let report = &dump["report"];
        let group_id = dump["crash_group_id"].as_i64().expect("grouped");

        let body = page(
            app,
            &format!("/devices/{}/coredumps/{}", device.id, dump["id"]),
        )
        .await;
        let headline = report["headline"].as_str().unwrap();
        let crashed = &report["tasks"][0];
        let frame = crashed["backtrace"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["symbols"].as_array().unwrap().clone())
            .find_map(|s| s["function"].as_str().map(str::to_string))
            .expect("a symbolised frame");
        assert_shows(
            "the report page",
            &body,
            &[
                &escaped(headline),
                "Backtrace",
                "Registers",
                &escaped(&frame),
                crashed["name"].as_str().unwrap(),
                "crashed",
                "Text report",
            ],
        );

        let list = page(app, &format!("/models/{model_id}/crash-groups?status=open")).await;
        assert_shows(
            "the crash groups",
            &list,
            &[&format!("href=\"/crash-groups/{group_id}\"")],
        );
        let resolved = page(
            app,
            &format!("/models/{model_id}/crash-groups?status=resolved&sort=device_count"),
        )
        .await;
        assert_shows(
            "no resolved groups",
            &resolved,
            &["No resolved crash groups."],
        );

        let detail = page(app, &format!("/crash-groups/{group_id}")).await;
        assert_shows(
            "the group",
            &detail,
            &[
                "<svg",
                "id=\"versions-chart\"",
                "<code>1.0.0</code>",
                "Resolve",
                "Ignore",
                "1 dump",
            ],
        );

        let overview = page(app, "/").await;
        assert_shows("the overview", &overview, &["1 group (1 dump)"]);
    })
    .await;
}

#[tokio::test]
async fn ui_rotation_page_groups_devices_as_the_dashboard_api_does() {
    for_each_stack("ui_rotation", &[], async |app| {
        let model_id = create_model(app, "sensor", None).await;
        let long_ago = iotsupport::db::now() - chrono::Duration::days(30);
        let recently = iotsupport::db::now() - chrono::Duration::days(1);
        let mut keys = Vec::new();
        for (state, completed, active) in [
            ("OK", None, true),
            ("TIMEOUT", Some(long_ago), true),
            ("TIMEOUT", Some(recently), true),
            ("TIMEOUT", None, true),
            ("OK", None, false),
        ] {
            let device = device_of(app, model_id).await;
            // Timed out just now: the rotation worker retries it only after the timeout.
            iotsupport::on_pool!(app.db(), |p| sqlx::query(
                "UPDATE devices SET rotation_state = $1, last_rotation_completed_at = $2, active = $3,
                                    rotation_timed_out_at = $4
                 WHERE id = $5"
            )
            .bind(state)
            .bind(completed)
            .bind(active)
            .bind(iotsupport::db::now())
            .bind(device.id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
            keys.push(device.key);
        }
        let request = app.admin_request(http::Method::GET, app.url("/api/rotation/dashboard"));
        let (status, dashboard) = status_and_json(request.send().await.unwrap()).await;
        assert_eq!(status, 200, "{dashboard}");
        let counts = &dashboard["counts"];
        assert_eq!(counts, &json!({"healthy": 1, "warning": 2, "critical": 1, "inactive": 1}));

        let body = page(app, "/rotation").await;
        assert_shows(
            "the rotation page",
            &body,
            &["Critical (1)", "Warning (2)", "Healthy (1)", "Inactive (1)", "Rotate the whole fleet"],
        );
        for key in &keys {
            assert!(body.contains(key.as_str()), "{key} missing:\n{body}");
        }
        // The overview counts the same groups in SQL.
        let overview = page(app, "/").await;
        assert_shows(
            "the overview",
            &overview,
            &["<strong>1</strong> healthy", "<strong>2</strong> timed out", "<strong>1</strong> critical", "<strong>1</strong> inactive"],
        );
    })
    .await;
}

/// The model page shows the newest few open crash groups and how many there are, without loading
/// them all (a model can gather thousands).
#[tokio::test]
async fn the_model_page_shows_the_newest_open_groups_and_how_many() {
    for_each_stack("ui_model_groups", &[], async |app| {
        let model_id = create_model(app, "grouped", None).await;
        let now = iotsupport::db::now();
        for i in 0..7i64 {
            insert_group(app, model_id, i, now - chrono::Duration::minutes(i), 0, 0).await;
        }
        let body = page(app, &format!("/models/{model_id}")).await;
        assert_shows(
            "the model page",
            &body,
            &[
                "All 7 open crash groups",
                "crash number 0",
                "crash number 4",
            ],
        );
        assert!(!body.contains("crash number 5"), "an older group is shown");
    })
    .await;
}

/// The lists of a large model come in pages: the model page's devices, the rotation page's
/// groups and the crash-group page, each with a link to the next page that shows the rest.
#[tokio::test]
async fn the_lists_of_a_large_model_come_in_pages() {
    for_each_stack("ui_pages_paged", &[], async |app| {
        let model_id = create_model(app, "big", None).await;
        let mut keys = Vec::new();
        for _ in 0..101 {
            keys.push(device_of(app, model_id).await.key);
        }
        keys.sort();
        let now = iotsupport::db::now();
        for i in 0..101i64 {
            insert_group(app, model_id, i, now - chrono::Duration::minutes(i), 1, 1).await;
        }
        let next_link = |body: &str| -> String {
            let at = body.find(r#"rel="next" href=""#).expect("a next-page link") + 17;
            body[at..at + body[at..].find('"').unwrap()].replace("&amp;", "&")
        };

        // A device listed: its key as the link to its page.
        let listed = |body: &str, key: &str| body.contains(&format!("<code>{key}</code></a>"));
        let first = page(app, &format!("/models/{model_id}")).await;
        assert!(
            listed(&first, &keys[99]) && !listed(&first, &keys[100]),
            "{first}"
        );
        let second = page(app, &next_link(&first)).await;
        assert!(
            listed(&second, &keys[100]) && !listed(&second, &keys[99]),
            "{second}"
        );
        assert!(!second.contains(r#"rel="next""#));
        assert_shows(
            "the second page",
            &second,
            &["First page", &format!("after <code>{}</code>", keys[99])],
        );

        let rotation = page(app, "/rotation").await;
        assert_shows(
            "the rotation page",
            &rotation,
            &["Healthy (101)", "The first 100, in key order."],
        );
        assert!(listed(&rotation, &keys[99]) && !listed(&rotation, &keys[100]));

        let groups = page(app, &format!("/models/{model_id}/crash-groups?status=open")).await;
        assert!(groups.contains("crash number 99<") && !groups.contains("crash number 100<"));
        let rest = page(app, &next_link(&groups)).await;
        assert!(
            rest.contains("crash number 100<") && !rest.contains("crash number 99<"),
            "{rest}"
        );
        assert!(!rest.contains(r#"rel="next""#));
    })
    .await;
}
