//! `limit`/`cursor` paging of `GET /api/devices` and `GET /api/devices/{id}/coredumps`: pages
//! concatenate to the unpaged list (which stays the default), a deleted row does not break the
//! next page, and bad limits or cursors are a 400 naming the parameter.

use serde_json::Value;

use crate::fleet::{create_model, device_of};
use crate::helpers::*;

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    app.admin_get_json(path).await
}

/// Follows `next_cursor` from `first` (a path with `limit`) to the end; the items of every page,
/// in order, and the number of pages.
async fn all_pages(app: &TestApp, first: &str, field: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut path = first.to_string();
    loop {
        let (status, body) = get(app, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page = body[field].as_array().expect("a list").clone();
        assert_eq!(body["count"], page.len(), "count is the page's: {body}");
        items.extend(page);
        pages += 1;
        assert!(pages < 100, "paging does not end");
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("{first}&cursor={cursor}"),
            None => break,
        }
    }
    (items, pages)
}

fn ids(items: &[Value]) -> Vec<i64> {
    items.iter().map(|v| v["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn device_list_pages_join_up_to_the_whole_list() {
    for_each_stack("paging_devices", &[], async |app| {
        let first = create_model(app, "pg_one", None).await;
        let second = create_model(app, "pg_two", None).await;
        for _ in 0..5 {
            device_of(app, first).await;
        }
        for _ in 0..2 {
            device_of(app, second).await;
        }
        let (status, whole) = app.list_devices().await;
        assert_eq!(status, 200);
        assert_eq!(whole["count"], 7);
        assert_eq!(whole["next_cursor"], Value::Null, "unpaged: {whole}");
        let whole = whole["devices"].as_array().unwrap().clone();

        let (paged, pages) = all_pages(app, "/api/devices?limit=3", "devices").await;
        assert_eq!(
            ids(&paged),
            ids(&whole),
            "pages in key order, nothing twice"
        );
        assert_eq!(pages, 3, "3 + 3 + 1");

        let (exact, pages) = all_pages(app, "/api/devices?limit=7", "devices").await;
        assert_eq!(exact.len(), 7);
        assert_eq!(pages, 1, "no empty page after an exactly full one");

        let path = format!("/api/devices?model_id={first}&limit=2");
        let (of_model, pages) = all_pages(app, &path, "devices").await;
        assert_eq!(of_model.len(), 5);
        assert_eq!(pages, 3);
        assert!(of_model.iter().all(|d| d["device_model_id"] == first));

        // A device deleted between pages: the next page starts after the cursor's key anyway.
        let (_, page) = get(app, "/api/devices?limit=2").await;
        let cursor = page["next_cursor"].as_str().unwrap().to_string();
        let last = page["devices"][1]["id"].as_i64().unwrap();
        let (status, _) = app.delete_device(last).await;
        assert_eq!(status, 204);
        let (status, rest) = get(app, &format!("/api/devices?limit=10&cursor={cursor}")).await;
        assert_eq!(status, 200, "{rest}");
        assert_eq!(ids(rest["devices"].as_array().unwrap()), ids(&whole[2..]));
    })
    .await;
}

#[tokio::test]
async fn coredump_list_pages_newest_first() {
    for_each_stack("paging_coredumps", &[], async |app| {
        let model = create_model(app, "pg_dumps", None).await;
        let device = device_of(app, model).await;
        for n in 0..5u8 {
            let (status, body) = app
                .iot_upload_coredump(
                    &device.credential,
                    "chip=esp32&firmware_version=1.0.0",
                    vec![n; 64],
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let (_, whole) = app.list_coredumps(device.id).await;
        assert_eq!(whole["count"], 5);
        assert_eq!(whole["next_cursor"], Value::Null);
        let whole = whole["coredumps"].as_array().unwrap().clone();
        let path = format!("/api/devices/{}/coredumps?limit=2", device.id);
        let (paged, pages) = all_pages(app, &path, "coredumps").await;
        assert_eq!(
            ids(&paged),
            ids(&whole),
            "same order as unpaged, newest first"
        );
        assert_eq!(pages, 3);
        let mut sorted = ids(&whole);
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(
            ids(&whole),
            sorted,
            "uploaded one after another: newest id first"
        );
    })
    .await;
}

#[tokio::test]
async fn bad_limits_and_cursors_are_refused() {
    for_each_stack("paging_refusals", &[], async |app| {
        let model = create_model(app, "pg_bad", None).await;
        let device = device_of(app, model).await;
        device_of(app, model).await;
        for path in [
            "/api/devices?limit=0".to_string(),
            "/api/devices?limit=1001".to_string(),
            format!("/api/devices/{}/coredumps?limit=0", device.id),
        ] {
            let (status, body) = get(app, &path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
        }
        let (status, body) = get(app, "/api/devices?limit=abc").await;
        assert_eq!(status, 400, "{body}");

        // Not base64, and a device-list cursor given to the dump list.
        let (_, page) = get(app, "/api/devices?limit=1").await;
        let device_cursor = page["next_cursor"]
            .as_str()
            .expect("a second page")
            .to_string();
        // A dump-list cursor naming a time no database holds (years -200,000 and 201,600).
        use base64::Engine;
        let far = |micros: i64| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("coredump:{micros}:1"))
        };
        let device_at = |text: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("device:{text}"))
        };
        for path in [
            "/api/devices?limit=1&cursor=%25%25".to_string(),
            // A NUL, which PostgreSQL refuses with a 500, and more than a key can hold.
            format!("/api/devices?limit=1&cursor={}", device_at("\0")),
            format!("/api/devices?limit=1&cursor={}", device_at("abcdefghij")),
            format!(
                "/api/devices/{}/coredumps?limit=1&cursor={}",
                device.id,
                far(-6_373_000_000_000_000_000)
            ),
            format!(
                "/api/devices/{}/coredumps?limit=1&cursor={}",
                device.id,
                far(6_300_000_000_000_000_000)
            ),
            format!(
                "/api/devices/{}/coredumps?limit=1&cursor={device_cursor}",
                device.id
            ),
        ] {
            let (status, body) = get(app, &path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body["error"].as_str().unwrap().contains("cursor"), "{body}");
        }
    })
    .await;
}

/// Puts device `id` into a rotation state with its last completed rotation `days_ago` days ago.
async fn set_rotation(app: &TestApp, id: i64, state: &str, days_ago: Option<i64>, active: bool) {
    let completed = days_ago.map(|d| iotsupport::db::now() - chrono::Duration::days(d));
    // A pending device's attempt started just now: one without an attempt time would be timed
    // out by the rotation worker while the test reads the dashboard.
    let attempt = (state == "PENDING").then(iotsupport::db::now);
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "UPDATE devices SET rotation_state = $1, last_rotation_completed_at = $2, active = $3,
                            last_rotation_attempt_at = $5
         WHERE id = $4"
    )
    .bind(state)
    .bind(completed)
    .bind(active)
    .bind(id)
    .bind(attempt)
    .execute(p)
    .await
    .map(|done| done.rows_affected()))
    .unwrap();
}

#[tokio::test]
async fn rotation_dashboard_limit_caps_the_lists_not_the_counts() {
    for_each_stack("paging_dashboard", &[], async |app| {
        let model = create_model(app, "pg_dash", None).await;
        let mut devices = Vec::new();
        for _ in 0..10 {
            devices.push(device_of(app, model).await.id);
        }
        // Healthy: 0, 1, 2 (OK) and 3 (PENDING: a QUEUED one would be started meanwhile); warning: 4 (never rotated), 5 (6 days), 9 (below); critical:
        // 6 (7 days, the default threshold) and 7 (30 days); inactive: 8 (TIMEOUT, 30 days).
        set_rotation(app, devices[3], "PENDING", None, true).await;
        set_rotation(app, devices[4], "TIMEOUT", None, true).await;
        set_rotation(app, devices[5], "TIMEOUT", Some(6), true).await;
        set_rotation(app, devices[6], "TIMEOUT", Some(7), true).await;
        set_rotation(app, devices[7], "TIMEOUT", Some(30), true).await;
        set_rotation(app, devices[8], "TIMEOUT", Some(30), false).await;
        // Warning too: 9 completed on the cutoff's own day, a minute after the cutoff (the
        // counters sum whole days before that day and count that day's devices one by one).
        let just_after =
            iotsupport::db::now() - chrono::Duration::days(7) + chrono::Duration::minutes(1);
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE devices SET rotation_state = 'TIMEOUT', last_rotation_completed_at = $1
             WHERE id = $2"
        )
        .bind(just_after)
        .bind(devices[9])
        .execute(p)
        .await
        .map(|done| done.rows_affected()))
        .unwrap();
        let (status, whole) = get(app, "/api/rotation/dashboard").await;
        assert_eq!(status, 200, "{whole}");
        assert_eq!(
            whole["counts"],
            serde_json::json!({"healthy": 4, "warning": 3, "critical": 2, "inactive": 1}),
            "{whole}"
        );
        for limit in [1usize, 2, 1000] {
            let (status, capped) =
                get(app, &format!("/api/rotation/dashboard?limit={limit}")).await;
            assert_eq!(status, 200, "{capped}");
            assert_eq!(
                capped["counts"], whole["counts"],
                "counts count every device"
            );
            for list in ["healthy", "warning", "critical", "inactive"] {
                let all = whole[list].as_array().unwrap();
                let expected = &all[..all.len().min(limit)];
                assert_eq!(
                    capped[list].as_array().unwrap(),
                    expected,
                    "limit {limit}, {list}: the first devices of the whole list, field for field"
                );
            }
        }
        for bad in ["0", "1001", "x"] {
            let (status, body) = get(app, &format!("/api/rotation/dashboard?limit={bad}")).await;
            assert_eq!(status, 400, "limit={bad}: {body}");
        }
    })
    .await;
}
