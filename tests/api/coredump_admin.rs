//! Core dumps as admins see them (issue #5): per-device retention through the outbox, devices
//! acting only as themselves and admin URLs scoped to their device, downloads whole or by range,
//! and deletes whose objects follow through the outbox.

use std::time::Duration;

use http::Method;
use iotsupport::layout::coredump_key;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::Operation;
use serde_json::{json, Value};

use crate::client::status_and_json;
use crate::coredumps::*;
use crate::helpers::*;

/// Another process whose clock is ahead stamped the device's dumps later than this one's clock
/// says it is now: the upload's own dump still counts as the newest, and the oldest goes.
#[tokio::test]
async fn retention_never_prunes_the_dump_it_was_just_given() {
    TestApp::builder("coredump_retention_clock")
        .env("MAX_COREDUMPS", "2")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let a = model_with_device(app, "sensor").await;
            let first = upload_ok(app, &a, "1.0", b"one").await;
            let second = upload_ok(app, &a, "1.0", b"two").await;
            // Both an hour ahead, the first still the older.
            for (id, minutes) in [(first, 60), (second, 61)] {
                let at = iotsupport::db::now() + chrono::Duration::minutes(minutes);
                iotsupport::on_pool!(app.db(), |p| sqlx::query(
                    "UPDATE coredumps SET uploaded_at = $1 WHERE id = $2"
                )
                .bind(at)
                .bind(id)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
                .unwrap();
            }
            let third = upload_ok(app, &a, "1.0", b"three").await;
            assert_eq!(
                app.get_coredump(a.id, third).await.0,
                200,
                "the new dump is gone"
            );
            assert_eq!(app.get_coredump(a.id, second).await.0, 200);
            assert_eq!(app.get_coredump(a.id, first).await.0, 404);
        })
        .await;
}

#[tokio::test]
async fn retention_keeps_the_newest_dumps_of_each_device_and_deletes_the_rest_via_the_outbox() {
    TestApp::builder("coredump_retention")
        .env("MAX_COREDUMPS", "2")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let a = model_with_device(app, "sensor").await;
            let b = device_of(app, a.model_id).await;
            let other = upload_ok(app, &b, "1.0", b"b's dump").await;
            let mut ids = Vec::new();
            for n in 0..3 {
                ids.push(upload_ok(app, &a, "1.0", format!("dump {n}").as_bytes()).await);
            }
            // The oldest row went in the third upload's transaction.
            let (_, list) = app.list_coredumps(a.id).await;
            let listed: Vec<i64> = list["coredumps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_i64().unwrap())
                .collect();
            assert_eq!(listed, [ids[2], ids[1]], "newest first");
            assert_eq!(list["count"], 2);
            // Its parse, still queued, was withdrawn with it; the others wait.
            let mut queued: Vec<i64> = iotsupport::jobs::list(app.db())
                .await
                .unwrap()
                .iter()
                .map(|j| {
                    serde_json::from_str::<Value>(&j.payload).unwrap()["coredump_id"]
                        .as_i64()
                        .unwrap()
                })
                .collect();
            queued.sort();
            let mut expected = vec![other, ids[1], ids[2]];
            expected.sort();
            assert_eq!(queued, expected);
            // Its object follows through the outbox.
            let oldest = coredump_key(&a.key, ids[0]).unwrap();
            let gone = eventually(Duration::from_secs(10), || async {
                app.state.storage.head(&oldest).await.is_err()
            })
            .await;
            assert!(gone, "pruned object still there");
            for id in &ids[1..] {
                let key = coredump_key(&a.key, *id).unwrap();
                assert!(app.state.storage.head(&key).await.is_ok());
            }
            // Another device's dumps are not counted against this one.
            let (_, list) = app.list_coredumps(b.id).await;
            assert_eq!(list["coredumps"][0]["id"], other);
            assert_eq!(app.get_coredump(a.id, ids[0]).await.0, 404);
        })
        .await;
}

/// Retention goes by each device's dump count, which triggers keep through every insert and
/// delete (uploads, retention's own prunes, an admin's deletes, a device's cascade): a device
/// brought back under its limit by a delete is pruned only once it is over it again, and then
/// only its oldest dump.
#[tokio::test]
async fn retention_goes_by_a_dump_count_every_insert_and_delete_keeps() {
    TestApp::builder("coredump_count")
        .env("MAX_COREDUMPS", "3")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let a = model_with_device(app, "sensor").await;
            let b = device_of(app, a.model_id).await;
            upload_ok(app, &b, "1.0", b"b's dump").await;
            let listed = async || listed_ids(app, a.id).await;
            let kept = async || -> i64 {
                let counts = assert_dump_counts_kept(app).await;
                counts.iter().find(|(id, _)| *id == a.id).unwrap().1
            };
            let mut ids = Vec::new();
            for n in 0..3 {
                ids.push(upload_ok(app, &a, "1.0", format!("dump {n}").as_bytes()).await);
                assert_eq!(kept().await, n + 1);
            }
            assert_eq!(app.delete_coredump(a.id, ids[1]).await.0, 204);
            assert_eq!(kept().await, 2);
            // Back at the limit: nothing pruned.
            ids.push(upload_ok(app, &a, "1.0", b"dump 3").await);
            assert_eq!(listed().await, [ids[3], ids[2], ids[0]]);
            assert_eq!(kept().await, 3);
            // Over it: the oldest goes, and only it.
            ids.push(upload_ok(app, &a, "1.0", b"dump 4").await);
            assert_eq!(listed().await, [ids[4], ids[3], ids[2]]);
            assert_eq!(kept().await, 3);
            assert_eq!(app.delete_coredumps(a.id).await.0, 204);
            assert_eq!(kept().await, 0);
            // The other device's dump was counted for it alone all along; deleting that device
            // deletes the dump by cascade, which the triggers (updating a device row that is
            // going) must let through.
            let counts = assert_dump_counts_kept(app).await;
            assert_eq!(counts.iter().find(|(id, _)| *id == b.id).unwrap().1, 1);
            assert_eq!(app.delete_device(b.id).await.0, 204);
            assert_eq!(count(app, "coredumps").await, 0);
            assert_dump_counts_kept(app).await;
        })
        .await;
}

/// The dump count finds what to prune but never decides it alone: a count that drifted high
/// (triggers bypassed by hand) deletes nothing among the newest `MAX_COREDUMPS`, and one that
/// drifted low only prunes less.
#[tokio::test]
async fn a_dump_count_that_drifted_never_makes_retention_delete_one_of_the_newest() {
    TestApp::builder("coredump_count_drift")
        .env("MAX_COREDUMPS", "3")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let a = model_with_device(app, "sensor").await;
            let set_count = async |n: i64| {
                iotsupport::on_pool!(app.db(), |p| sqlx::query(
                    "UPDATE devices SET coredump_count = $1 WHERE id = $2"
                )
                .bind(n)
                .bind(a.id)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
                .unwrap();
            };
            let listed = async || listed_ids(app, a.id).await;
            let mut ids = Vec::new();
            for n in 0..2 {
                ids.push(upload_ok(app, &a, "1.0", format!("dump {n}").as_bytes()).await);
            }
            set_count(100).await;
            ids.push(upload_ok(app, &a, "1.0", b"dump 2").await);
            assert_eq!(listed().await, [ids[2], ids[1], ids[0]], "within the limit");
            ids.push(upload_ok(app, &a, "1.0", b"dump 3").await);
            assert_eq!(listed().await, [ids[3], ids[2], ids[1]], "only the oldest");
            set_count(0).await;
            ids.push(upload_ok(app, &a, "1.0", b"dump 4").await);
            assert_eq!(listed().await, [ids[4], ids[3], ids[2], ids[1]]);
        })
        .await;
}

#[tokio::test]
async fn devices_act_only_as_themselves_and_admin_urls_are_scoped_to_their_device() {
    let token = "admin-token-for-tests-0123456789";
    let Some(app) = spawn_app_without_parsing(
        Stack::Production,
        "coredump_scoping",
        &[("ADMIN_TOKEN", token)],
    )
    .await
    else {
        return;
    };
    // The endpoint methods authenticate with the app's ADMIN_TOKEN.
    let a = &model_with_device(&app, "sensor").await;
    let b = &device_of(&app, a.model_id).await;
    let query = "chip=esp32&firmware_version=1.0";

    // A's secret with B's key, no credential, the admin token: all refused, nothing written.
    let secret_of_a = a.credential.split_once('.').unwrap().1;
    let impostor = TestDevice {
        credential: format!("{}.{secret_of_a}", b.key),
        ..b.clone()
    };
    assert_eq!(upload(&app, &impostor, query, b"x".to_vec()).await.0, 401);
    let anonymous = app
        .client
        .post(app.url(&format!("/api/iot/coredump?{query}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let with_admin_token = TestDevice {
        credential: token.to_string(),
        ..a.clone()
    };
    assert_eq!(
        upload(&app, &with_admin_token, query, b"x".to_vec())
            .await
            .0,
        401
    );
    assert_eq!(count(&app, "coredumps").await, 0);

    // A device uploads as itself only: the dump is A's.
    let id = upload_ok(&app, a, "1.0", b"a's dump").await;
    let rows: Vec<i64> = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT device_id FROM coredumps"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    assert_eq!(rows, [a.id]);

    // Devices cannot read dumps through the admin API.
    let path = format!("/api/devices/{}/coredumps", a.id);
    let as_device = app.device_request(Method::GET, &path, &a.credential);
    assert_eq!(as_device.send().await.unwrap().status(), 401);

    // A's dump under B's URL does not exist, whatever the route.
    let under_b = format!("/api/devices/{}/coredumps/{id}", b.id);
    for (method, path) in [
        (Method::GET, under_b.clone()),
        (Method::GET, format!("{under_b}/download")),
        (Method::POST, format!("{under_b}/reparse")),
        (Method::DELETE, under_b.clone()),
    ] {
        let response = app.admin_request(method.clone(), app.url(&path)).send();
        let (status, body) = status_and_json(response.await.unwrap()).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(body["error"], format!("Coredump {id} was not found"));
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
    }
    assert_eq!(app.list_coredumps(b.id).await.1["count"], 0);
    assert_eq!(app.delete_coredumps(b.id).await.0, 204);
    assert_eq!(count(&app, "coredumps").await, 1, "A's dump survives");

    // Unknown devices are named.
    for (what, (status, body)) in [
        ("list", app.list_coredumps(9999).await),
        ("delete all", app.delete_coredumps(9999).await),
        ("get", app.get_coredump(9999, id).await),
    ] {
        assert_eq!(status, 404, "{what}: {body}");
        assert_eq!(body["error"], "Device 9999 was not found");
    }
    // The admin still reads A's dump with the token.
    assert_eq!(app.get_coredump(a.id, id).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn admins_download_dumps_whole_or_by_range() {
    TestApp::builder("coredump_download")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
            let content: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
            let id = upload_ok(app, &device, "1.0", &content).await;
            let path = format!("/api/devices/{}/coredumps/{id}/download", device.id);

            let response = app.download_coredump(device.id, id, &[]).await;
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.headers()["content-disposition"],
                format!("attachment; filename=coredump_{id}.dmp").as_str()
            );
            assert_eq!(
                response.headers()["content-type"],
                "application/octet-stream"
            );
            assert_eq!(response.bytes().await.unwrap().as_ref(), content.as_slice());

            let response = app
                .download_coredump(device.id, id, &[("range", "bytes=100-199")])
                .await;
            assert_eq!(response.status(), 206);
            assert_eq!(response.headers()["content-range"], "bytes 100-199/5000");
            assert_eq!(response.bytes().await.unwrap().as_ref(), &content[100..200]);
            let ranged = app
                .faults
                .gets()
                .into_iter()
                .any(|(key, range)| key.ends_with(&format!("/{id}.dmp")) && range.is_some());
            assert!(
                ranged,
                "the range is asked of the store, not cut from a full read"
            );

            let response = app
                .download_coredump(device.id, id, &[("range", "bytes=6000-")])
                .await;
            assert_eq!(response.status(), 416);

            let response = app.client.head(app.url(&path)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-length"], "5000");
            // An ETag, so a download broken off resumes with If-Range and a copy is revalidated.
            let etag = response.headers()["etag"].to_str().unwrap().to_string();
            let resumed = app
                .download_coredump(
                    device.id,
                    id,
                    &[("range", "bytes=10-19"), ("if-range", &etag)],
                )
                .await;
            assert_eq!(resumed.status(), 206);
            assert_eq!(resumed.bytes().await.unwrap().as_ref(), &content[10..20]);
            let unchanged = app
                .download_coredump(device.id, id, &[("if-none-match", &etag)])
                .await;
            assert_eq!(unchanged.status(), 304);

            // The object store being down is a 503, not a 404.
            app.faults.inject(Fault::always(Operation::Get));
            let response = app.download_coredump(device.id, id, &[]).await;
            assert_eq!(response.status(), 503);
            app.faults.heal();
            let response = app.download_coredump(device.id, id + 1, &[]).await;
            assert_eq!(response.status(), 404);

            // A row whose object is not in the store (a dump adopted from the Python service
            // before migrate-to-s3 ran): 404 saying what to run, not a 500.
            let key = iotsupport::layout::coredump_key(&device.key, id).unwrap();
            app.state.storage.delete(&key).await.unwrap();
            let response = app.download_coredump(device.id, id, &[]).await;
            assert_eq!(response.status(), 404);
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("migrate-to-s3"),
                "{body}"
            );
        })
        .await;
}

#[tokio::test]
async fn admins_delete_one_dump_or_all_and_the_objects_follow_through_the_outbox() {
    TestApp::builder("coredump_delete")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
            let mut ids = Vec::new();
            for n in 0..3 {
                ids.push(upload_ok(app, &device, "1.0", format!("dump {n}").as_bytes()).await);
            }
            assert_eq!(app.delete_coredump(device.id, ids[0]).await.0, 204);
            let (status, body) = app.delete_coredump(device.id, ids[0]).await;
            assert_eq!(status, 404);
            assert_eq!(body["error"], format!("Coredump {} was not found", ids[0]));
            assert_eq!(count(app, "coredumps").await, 2);
            let first = coredump_key(&device.key, ids[0]).unwrap();
            assert!(
                eventually(Duration::from_secs(10), || async {
                    app.state.storage.head(&first).await.is_err()
                })
                .await,
                "deleted dump's object left behind"
            );

            // The store being down does not block the delete; the outbox catches up later.
            app.faults.inject(Fault::always(Operation::Delete));
            assert_eq!(app.delete_coredumps(device.id).await.0, 204);
            assert_eq!(count(app, "coredumps").await, 0);
            let (_, list) = app.list_coredumps(device.id).await;
            assert_eq!(
                list,
                json!({"coredumps": [], "count": 0, "next_cursor": null})
            );
            app.faults.heal();
            // Outbox retries back off (5 s first); make them due now.
            make_deletions_due(app).await;
            assert!(
                eventually(Duration::from_secs(10), || async {
                    objects(app, "coredumps").await.is_empty()
                })
                .await,
                "objects left behind"
            );
        })
        .await;
}
