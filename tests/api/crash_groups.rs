//! Crash groups through the API (SPEC §15): real dumps of the ESP test data grouped by signature
//! across devices and builds and separately per model, the list with its filters and orders, a
//! group's detail, the status (resolved groups reopen as regressions, ignored ones stay ignored
//! and count) with its metrics, and the errors.

use serde_json::{json, Value};

use crate::coredumps::*;
use crate::crash_support::*;
use crate::fleet::device_of;
use crate::helpers::*;

fn ids(groups: &[Value]) -> Vec<i64> {
    groups.iter().map(|g| g["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn one_crash_on_two_devices_in_two_builds_is_one_group_and_another_crash_is_another() {
    let Some(crashes) = crashes() else { return };
    for_each_stack("crash_groups_grouping", &[], async |app| {
        let d1 = model_with_device(app, "sensor").await;
        let d2 = device_of(app, d1.model_id).await;
        store_builds(app, "sensor", &crashes).await;

        let a1 = crash_and_parse(app, &d1, &crashes.abort_v1).await;
        let a2 = crash_and_parse(app, &d2, &crashes.abort_v2).await;
        let a3 = crash_and_parse(app, &d1, &crashes.abort_v2).await;
        let s1 = crash_and_parse(app, &d2, &crashes.store).await;

        // Most recently seen first: the store fault came last.
        let list = groups(app, d1.model_id, "").await;
        assert_eq!(list.len(), 2, "{list:?}");
        let (store, abort) = (&list[0], &list[1]);
        assert_eq!(abort["title"], "abort() in fail_once", "{abort}");
        assert!(
            abort["signature"]
                .as_str()
                .unwrap()
                .starts_with("v1 | abort() | fail_once"),
            "{abort}"
        );
        assert_eq!(abort["signature_hash"].as_str().unwrap().len(), 64);
        assert_eq!(abort["status"], "open");
        assert_eq!(abort["coredump_count"], 3);
        assert_eq!(abort["device_count"], 2);
        assert_eq!(abort["firmware_versions"], json!(["1.0.0", "1.1.0"]));
        assert_eq!(abort["device_model_id"], d1.model_id);
        assert_eq!(abort["first_seen_at"], a1["uploaded_at"]);
        assert_eq!(abort["last_seen_at"], a3["uploaded_at"]);
        assert_eq!(abort["regressed_at"], Value::Null);
        // This dump records another ELF's SHA-256 than its case's (MANIFEST caveat 4): it
        // signs apart from a matching read, and says so.
        assert_eq!(
            store["title"], "StoreProhibited in recur_func (read against another build)",
            "{store}"
        );
        assert_eq!(store["coredump_count"], 1);
        assert_eq!(store["device_count"], 1);
        assert_eq!(store["firmware_versions"], json!(["2.0.0"]));
        assert_eq!(store["first_seen_at"], s1["uploaded_at"]);

        // Each dump names its group, in the detail and in the list.
        let (abort_id, store_id) = (abort["id"].clone(), store["id"].clone());
        for dump in [&a1, &a2, &a3] {
            assert_eq!(dump["crash_group_id"], abort_id, "{dump}");
        }
        assert_eq!(s1["crash_group_id"], store_id);
        let (_, listed) = app.list_coredumps(d1.id).await;
        assert!(listed["coredumps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["crash_group_id"] == abort_id));

        // The detail: counts per version, with the devices running each version.
        let detail = group(app, abort_id.as_i64().unwrap()).await;
        assert_eq!(detail["coredump_count"], 3);
        assert_eq!(detail["stored_coredump_count"], 3);
        let counts = detail["firmware_version_counts"].as_array().unwrap();
        assert_eq!(counts.len(), 2, "{detail}");
        assert_eq!(counts[0]["firmware_version"], "1.0.0");
        assert_eq!(counts[0]["coredump_count"], 1);
        assert_eq!(counts[0]["device_count"], 1);
        assert_eq!(counts[1]["firmware_version"], "1.1.0");
        assert_eq!(counts[1]["coredump_count"], 2);
        assert_eq!(counts[1]["device_count"], 2);
        assert_eq!(counts[1]["first_seen_at"], a2["uploaded_at"]);
        assert_eq!(counts[1]["last_seen_at"], a3["uploaded_at"]);
        // Both devices uploaded last with another version than 1.0.0 (the presence flush is
        // asynchronous: wait for it).
        let running = eventually(std::time::Duration::from_secs(10), || async {
            let detail = group(app, abort_id.as_i64().unwrap()).await;
            let c = &detail["firmware_version_counts"];
            c[0]["devices_running"] == 0 && c[1]["devices_running"] == 1
        })
        .await;
        assert!(running, "{}", group(app, abort_id.as_i64().unwrap()).await);
        let newest: Vec<i64> = detail["coredumps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_i64().unwrap())
            .collect();
        assert_eq!(newest, [&a3, &a2, &a1].map(|d| d["id"].as_i64().unwrap()));
        assert_eq!(detail["coredumps"][0]["device_key"], d1.key.as_str());

        // Orders and filters.
        let by_count = ids(&groups(app, d1.model_id, "sort=coredump_count").await);
        assert_eq!(
            by_count,
            [abort_id.as_i64().unwrap(), store_id.as_i64().unwrap()]
        );
        assert_eq!(
            ids(&groups(app, d1.model_id, "sort=dump_count").await),
            by_count
        );
        assert_eq!(
            ids(&groups(app, d1.model_id, "sort=device_count").await),
            by_count
        );
        assert_eq!(
            ids(&groups(app, d1.model_id, "sort=last_seen").await),
            ids(&list)
        );
        assert_eq!(groups(app, d1.model_id, "status=open").await.len(), 2);
        assert_eq!(groups(app, d1.model_id, "status=resolved").await.len(), 0);

        // One event per group change: two created, then the abort group updated twice.
        let created = events_of(app, "crash_group_created").await;
        assert_eq!(created.len(), 2, "{created:?}");
        assert_eq!(created[0]["id"], abort_id);
        assert_eq!(created[0]["coredump_id"], a1["id"]);
        let updated = events_of(app, "crash_group_updated").await;
        assert_eq!(updated.len(), 2, "{updated:?}");
        assert_eq!(updated[1]["coredump_count"], 3);
        assert_eq!(updated[1]["device_count"], 2);
        let parsed_events = events_of(app, "coredump_parsed").await;
        assert_eq!(parsed_events[3]["crash_group_id"], store_id);
        assert_counts_match_ledger(app).await;
    })
    .await;
}

#[tokio::test]
async fn the_same_dump_from_three_devices_is_one_group_of_three_and_another_models_is_its_own() {
    let Some(crashes) = crashes() else { return };
    for_each_stack("crash_groups_three_devices", &[], async |app| {
        let d1 = model_with_device(app, "sensor").await;
        let d2 = device_of(app, d1.model_id).await;
        let d3 = device_of(app, d1.model_id).await;
        store_builds(app, "sensor", &crashes).await;
        let mut dumps = Vec::new();
        for device in [&d1, &d2, &d3] {
            dumps.push(crash_and_parse(app, device, &crashes.abort_v1).await);
        }

        let list = groups(app, d1.model_id, "").await;
        assert_eq!(list.len(), 1, "{list:?}");
        let g = &list[0];
        assert_eq!(g["title"], "abort() in fail_once", "{g}");
        assert_eq!(g["coredump_count"], 3, "{g}");
        assert_eq!(g["device_count"], 3, "{g}");
        assert_eq!(g["firmware_versions"], json!(["1.0.0"]));
        assert_eq!(g["first_seen_at"], dumps[0]["uploaded_at"]);
        assert_eq!(g["last_seen_at"], dumps[2]["uploaded_at"]);
        for dump in &dumps {
            assert_eq!(dump["crash_group_id"], g["id"], "{dump}");
        }
        let detail = group(app, g["id"].as_i64().unwrap()).await;
        let counts = &detail["firmware_version_counts"];
        assert_eq!(counts.as_array().unwrap().len(), 1, "{detail}");
        assert_eq!(
            (
                counts[0]["coredump_count"].as_i64(),
                counts[0]["device_count"].as_i64()
            ),
            (Some(3), Some(3)),
            "{detail}"
        );
        assert_eq!(detail["stored_coredump_count"], 3);

        // The same dump from a device of another model: a group of that model, the first one
        // unchanged.
        let other = model_with_device(app, "gateway").await;
        store_builds(app, "gateway", &crashes).await;
        let theirs = crash_and_parse(app, &other, &crashes.abort_v1).await;
        let their_groups = groups(app, other.model_id, "").await;
        assert_eq!(their_groups.len(), 1, "{their_groups:?}");
        let t = &their_groups[0];
        assert_ne!(t["id"], g["id"]);
        assert_eq!(t["device_model_id"], other.model_id);
        assert_eq!(t["signature_hash"], g["signature_hash"]);
        assert_eq!(
            (t["coredump_count"].as_i64(), t["device_count"].as_i64()),
            (Some(1), Some(1)),
            "{t}"
        );
        assert_eq!(theirs["crash_group_id"], t["id"]);
        let ours = groups(app, d1.model_id, "").await;
        assert_eq!(ours.len(), 1, "{ours:?}");
        assert_eq!(
            (
                ours[0]["coredump_count"].as_i64(),
                ours[0]["device_count"].as_i64()
            ),
            (Some(3), Some(3)),
            "{ours:?}"
        );
        assert_eq!(events_of(app, "crash_group_created").await.len(), 2);
        assert_counts_match_ledger(app).await;
    })
    .await;
}

#[tokio::test]
async fn unknown_groups_and_models_are_404_and_unknown_statuses_and_orders_are_400() {
    for_each_stack("crash_groups_errors", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let (status, body) = app.get_crash_group(4242).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "CrashGroup 4242 was not found");
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
        let (status, body) = app
            .update_crash_group(4242, json!({"status": "resolved"}))
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "CrashGroup 4242 was not found");
        let (status, body) = app.list_crash_groups(device.model_id + 100, "").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(
            body["error"],
            format!("DeviceModel {} was not found", device.model_id + 100)
        );
        for query in ["status=closed", "sort=first_seen", "status=OPEN"] {
            let (status, body) = app.list_crash_groups(device.model_id, query).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert_eq!(body["code"], "VALIDATION_FAILED");
        }
        let (_, body) = app.list_crash_groups(device.model_id, "sort=x").await;
        assert_eq!(
            body["error"],
            "sort must be one of last_seen, coredump_count, device_count"
        );
        let (status, body) = app.list_crash_groups(device.model_id, "status=").await;
        assert_eq!(status, 200, "an empty status means any: {body}");
    })
    .await;
}

#[tokio::test]
async fn a_dump_uploaded_after_its_group_was_resolved_reopens_it_and_an_ignored_group_stays_ignored(
) {
    // Also the metrics: `crash_groups_open` at each status, `crash_group_regressions_total` counting
    // the one regression (and not the dump uploaded before the group was resolved).
    let Some(crashes) = crashes() else { return };
    let _exclusive = REOPENING_GROUPS.lock().await;
    // Parses are run one at a time here, so which dump is parsed when is the test's choice.
    TestApp::builder("crash_groups_status")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let regressions = regressions_total(app).await;
            let device = model_with_device(app, "sensor").await;
            store_builds(app, "sensor", &crashes).await;
            assert_open_groups(app, 0.0).await;
            let first = upload_crash(app, &device, &crashes.abort_v1).await;
            let before = upload_crash(app, &device, &crashes.abort_v2).await;
            run_one_job(app).await.unwrap();
            let id = group_of(app, &device, first).await.as_i64().unwrap();
            assert_open_groups(app, 1.0).await;

            let (status, body) = app
                .update_crash_group(id, json!({"status": "resolved"}))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["status"], "resolved");
            assert!(body["resolved_at"].is_string(), "{body}");
            assert_eq!(events_of(app, "crash_group_updated").await.len(), 1);
            // The same status again changes nothing and records nothing.
            let (status, _) = app
                .update_crash_group(id, json!({"status": "resolved"}))
                .await;
            assert_eq!(status, 200);
            assert_eq!(events_of(app, "crash_group_updated").await.len(), 1);
            assert_open_groups(app, 0.0).await;

            // A dump uploaded before the group was resolved, parsed after: the fix covers it.
            run_one_job(app).await.unwrap();
            assert_eq!(group_of(app, &device, before).await, id);
            let g = group(app, id).await;
            assert_eq!(
                (g["status"].as_str(), g["coredump_count"].as_i64()),
                (Some("resolved"), Some(2))
            );
            assert_eq!(g["regressed_at"], Value::Null);
            assert_open_groups(app, 0.0).await;
            assert_eq!(regressions_total(app).await, regressions);

            // A dump uploaded after: a regression.
            let after = upload_crash(app, &device, &crashes.abort_v2).await;
            run_one_job(app).await.unwrap();
            assert_eq!(group_of(app, &device, after).await, id);
            let g = group(app, id).await;
            assert_eq!(g["status"], "open", "{g}");
            assert!(g["regressed_at"].is_string(), "{g}");
            assert_eq!(g["coredump_count"], 3);
            let regressed = events_of(app, "crash_group_regressed").await;
            assert_eq!(regressed.len(), 1, "{regressed:?}");
            assert_eq!(regressed[0]["id"], id);
            assert_eq!(regressed[0]["status"], "open");
            assert_eq!(regressed[0]["coredump_id"], after);
            assert_eq!(regressions_total(app).await, regressions + 1.0);
            assert_open_groups(app, 1.0).await;

            // Ignored stays ignored, and counts.
            let (status, body) = app
                .update_crash_group(id, json!({"status": "ignored"}))
                .await;
            assert_eq!(status, 200, "{body}");
            let later = upload_crash(app, &device, &crashes.abort_v1).await;
            run_one_job(app).await.unwrap();
            assert_eq!(group_of(app, &device, later).await, id);
            let g = group(app, id).await;
            assert_eq!(g["status"], "ignored");
            assert_eq!(g["coredump_count"], 4);
            assert_eq!(events_of(app, "crash_group_regressed").await.len(), 1);
            assert_eq!(
                groups(app, device.model_id, "status=ignored").await.len(),
                1
            );
            assert_eq!(groups(app, device.model_id, "status=open").await.len(), 0);
            assert_eq!(regressions_total(app).await, regressions + 1.0);
            assert_open_groups(app, 0.0).await;

            // Back to open; unknown statuses are refused.
            let (status, body) = app.update_crash_group(id, json!({"status": "open"})).await;
            assert_eq!((status, body["status"].as_str()), (200, Some("open")));
            assert_open_groups(app, 1.0).await;
            let (status, body) = app.update_crash_group(id, json!({"status": "fixed"})).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(
                body["error"],
                "status must be one of open, resolved, ignored"
            );
            let (status, body) = app.update_crash_group(id, json!({})).await;
            assert_eq!(status, 400, "{body}");
            assert_counts_match_ledger(app).await;
        })
        .await;
}

#[tokio::test]
async fn changing_a_groups_status_requires_an_admin_token() {
    TestApp::builder("crash_groups_auth")
        .env("ADMIN_TOKEN", "a-long-enough-admin-token")
        .for_each_stack(async |app| {
            let model_id = crate::fleet::create_model(app, "sensor", None).await;
            for (method, path) in [
                (
                    http::Method::GET,
                    format!("/api/device-models/{model_id}/crash-groups"),
                ),
                (http::Method::GET, "/api/crash-groups/1".to_string()),
                (http::Method::PUT, "/api/crash-groups/1".to_string()),
            ] {
                let response = app
                    .client
                    .request(method.clone(), app.url(&path))
                    .json(&json!({"status": "open"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 401, "{method} {path}");
            }
        })
        .await;
}

/// `limit`/`cursor` page through a model's groups in every sort order: the pages together are
/// the whole list in the same order, ties included (equal counts, equal times), and a cursor
/// works only with the list and sort it was made for.
#[tokio::test]
async fn a_models_groups_come_in_pages_in_every_sort_order() {
    for_each_stack("crash_groups_paged", &[], async |app| {
        let model_id = crate::fleet::create_model(app, "paged", None).await;
        let now = iotsupport::db::now();
        for n in 0..23i64 {
            // Ties in every key: counts repeat, and groups 0–2 share one time.
            let seen = now - chrono::Duration::minutes((n - 2).max(0));
            insert_group(app, model_id, n, seen, n % 4, n % 3).await;
        }
        for sort in ["last_seen", "coredump_count", "device_count"] {
            let whole = ids(&groups(app, model_id, &format!("sort={sort}")).await);
            assert_eq!(whole.len(), 23);
            let mut paged = Vec::new();
            let mut cursor = String::new();
            loop {
                let query = format!("sort={sort}&limit=5&cursor={cursor}");
                let (status, body) = app.list_crash_groups(model_id, &query).await;
                assert_eq!(status, 200, "{body}");
                let page = body["crash_groups"].as_array().unwrap();
                assert!(page.len() <= 5);
                paged.extend(ids(page));
                match body["next_cursor"].as_str() {
                    Some(next) => cursor = next.to_string(),
                    None => break,
                }
            }
            assert_eq!(paged, whole, "{sort}");
        }
        // Without a limit, no cursor; a cursor of another sort, or of another list, is refused.
        let (_, all) = app.list_crash_groups(model_id, "").await;
        assert_eq!(all["next_cursor"], Value::Null);
        let (_, first) = app.list_crash_groups(model_id, "limit=2").await;
        let cursor = first["next_cursor"].as_str().unwrap().to_string();
        let (status, body) = app
            .list_crash_groups(model_id, &format!("sort=device_count&cursor={cursor}"))
            .await;
        assert_eq!(status, 400, "{body}");
        for bad in ["limit=0", "limit=1001", "cursor=bm90LWEtY3Vyc29y"] {
            let (status, body) = app.list_crash_groups(model_id, bad).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
    })
    .await;
}
