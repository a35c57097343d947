//! Stored firmware: golden rule 1 under S3 failures, idempotent re-uploads and conflicts,
//! retention with the PENDING core-dump guard, and the versions API (list, download, rollback,
//! delete). Downloads in detail are in `firmware_downloads.rs`, the CI pipeline in
//! `firmware_pipeline.rs`, the bundle checks in `firmware.rs`.

use std::time::Duration;

use iotsupport::storage::faulty::Fault;
use iotsupport::storage::Operation;
use serde_json::{json, Value};

use crate::firmware_support::*;
use crate::fleet::{create_model, device_of};
use crate::helpers::*;

/// `Authorization` header value of a device created through the API (`create_device`'s answer).
#[allow(dead_code)] // Kept for the tests that import it; new tests use `TestDevice::credential`.
pub fn device_auth(device: &Value) -> String {
    format!(
        "Bearer {}.{}",
        device["key"].as_str().unwrap(),
        device["device_secret"].as_str().unwrap()
    )
}

#[tokio::test]
async fn an_upload_stores_five_objects_a_row_with_hashes_and_becomes_current() {
    for_each_stack("firmware_store", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let build = Build::new("1.2.0", "a");
        let (status, body) = upload(app, model, build.zip(CODE)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"id": model, "code": CODE, "firmware_version": "1.2.0"})
        );
        assert_build_stored(app, CODE, &build).await;
        assert_eq!(current_version(app, model).await.as_deref(), Some("1.2.0"));

        let list = versions(app, model).await;
        assert_eq!(list["count"], 1);
        assert_eq!(list["current_version"], "1.2.0");
        let v = &list["versions"][0];
        assert_eq!(v["version"], "1.2.0");
        assert_eq!(v["is_current"], true);
        assert_eq!(v["chip"], "esp32");
        assert_eq!(v["project_name"], "sensor_node");
        assert_eq!(v["idf_version"], "v5.2.2");
        assert_eq!(v["build_date"], "Jul 25 2024");
        assert_eq!(v["build_time"], "16:23:40");
        assert_eq!(v["secure_version"], 3);
        assert_eq!(v["app_elf_sha256"], sha256_hex(&build.elf));
        assert!(v["uploaded_at"].as_str().unwrap().ends_with('Z'), "{v}");
        for (i, (name, bytes)) in build.artifacts().iter().enumerate() {
            assert_eq!(v["artifacts"][i]["name"], *name);
            assert_eq!(v["artifacts"][i]["size"], bytes.len());
            assert_eq!(v["artifacts"][i]["sha256"], sha256_hex(bytes));
        }

        // The model shows it too.
        let (_, m) = app.get_model(model).await;
        assert_eq!(m["firmware_version"], "1.2.0");
    })
    .await;
}

#[tokio::test]
async fn an_s3_failure_half_way_is_503_and_leaves_no_row_and_no_objects() {
    for_each_stack("firmware_s3_failure", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        upload_ok(app, model, CODE, &v1).await;

        let v2 = Build::new("2.0.0", "two");
        app.faults
            .inject(Fault::always(Operation::Put).for_keys_containing("2.0.0/firmware.map"));
        let (status, body) = upload(app, model, v2.zip(CODE)).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
        assert_nothing_stored(app, model, Some("1.0.0"), &["1.0.0"]).await;
        assert!(objects_under(app, &format!("firmware/{CODE}/2.0.0"))
            .await
            .is_empty());
        // The version stored before is untouched.
        assert_build_stored(app, CODE, &v1).await;

        // Re-uploading the stored version while S3 is down is fine: nothing is rewritten.
        app.faults.inject(Fault::always(Operation::Put));
        upload_ok(app, model, CODE, &v1).await;
        assert_build_stored(app, CODE, &v1).await;

        app.faults.heal();
        upload_ok(app, model, CODE, &v2).await;
        assert_build_stored(app, CODE, &v2).await;
        assert_eq!(current_version(app, model).await.as_deref(), Some("2.0.0"));
    })
    .await;
}

#[tokio::test]
async fn an_identical_reupload_rewrites_nothing_and_different_content_is_409() {
    for_each_stack("firmware_reupload", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        let v2 = Build::new("2.0.0", "two");
        upload_ok(app, model, CODE, &v1).await;
        let first_upload = versions(app, model).await["versions"][0]["uploaded_at"].clone();
        upload_ok(app, model, CODE, &v2).await;
        assert_eq!(current_version(app, model).await.as_deref(), Some("2.0.0"));

        let puts = app.faults.calls(Operation::Put);
        tokio::time::sleep(Duration::from_millis(5)).await;
        upload_ok(app, model, CODE, &v1).await;
        assert_eq!(
            app.faults.calls(Operation::Put),
            puts,
            "no object rewritten"
        );
        assert_eq!(current_version(app, model).await.as_deref(), Some("1.0.0"));
        let list = versions(app, model).await;
        assert_eq!(
            version_names(&list),
            ["1.0.0", "2.0.0"],
            "1.0.0 is the newest upload now"
        );
        assert_ne!(
            list["versions"][0]["uploaded_at"], first_upload,
            "uploaded_at bumped"
        );

        // Another build under a stored version: 409, nothing changes.
        let other = Build::new("2.0.0", "a different build");
        let (status, body) = upload(app, model, other.zip(CODE)).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "CONFLICT");
        assert!(body["error"].as_str().unwrap().contains("2.0.0"), "{body}");
        assert_eq!(current_version(app, model).await.as_deref(), Some("1.0.0"));
        assert_build_stored(app, CODE, &v2).await;
        assert_eq!(app.faults.calls(Operation::Put), puts);
    })
    .await;
}

async fn insert_coredump(app: &TestApp, device_id: i64, version: &str, status: &str) -> i64 {
    let now = iotsupport::db::now();
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "INSERT INTO coredumps (device_id, chip, firmware_version, size, parse_status, uploaded_at,
            created_at, updated_at)
         VALUES ($1, 'esp32', $2, 100, $3, $4, $4, $4) RETURNING id"
    )
    .bind(device_id)
    .bind(version)
    .bind(status)
    .bind(now)
    .fetch_one(p)
    .await)
    .unwrap()
}

/// A dump a device is uploading for a version while a firmware upload's retention would prune
/// that version: retention waits for the dump and spares the version (on PostgreSQL the two run
/// at once; SQLite's one writer serialises them). Here the dump's upload is held just before its
/// commit by a lock on the jobs table, which its last statement writes.
#[tokio::test]
async fn retention_waits_for_a_dump_being_uploaded_for_the_version_it_would_prune() {
    let Some(app) = TestApp::builder("firmware_retention_upload_race")
        .env("MAX_FIRMWARES", "2")
        .without_default_job_handlers()
        .spawn(Stack::Production)
        .await
    else {
        return;
    };
    let model = create_model(&app, CODE, None).await;
    let device = device_of(&app, model).await;
    for version in ["1.0.0", "2.0.0"] {
        upload_ok(&app, model, CODE, &Build::new(version, "r")).await;
    }
    raced_with_a_dump_upload(&app, model, &device).await;
    assert_eq!(
        stored_versions(&app, model).await,
        ["1.0.0", "2.0.0", "3.0.0"],
        "1.0.0 was pruned although a pending dump reports it"
    );
    app.stop().await;
}

/// Uploads 3.0.0 while `device`'s dump for 1.0.0 is held just before its commit.
async fn raced_with_a_dump_upload(
    app: &TestApp,
    model: i64,
    device: &crate::coredumps::TestDevice,
) {
    let mut hold = app.db().begin().await.unwrap();
    iotsupport::execute!(&mut hold, sqlx::query("LOCK TABLE jobs IN EXCLUSIVE MODE")).unwrap();
    let query = "chip=esp32&firmware_version=1.0.0";
    let mut dump = std::pin::pin!(app.iot_upload_coredump(&device.credential, query, "a dump"));
    tokio::select! {
        answer = &mut dump => panic!("the dump's upload did not wait for the jobs table: {answer:?}"),
        waiting = a_lock_is_awaited(app, "l.relation = 'jobs'::regclass") => {
            assert!(waiting, "the dump's upload did not reach its last statement");
        }
    }
    // 3.0.0 makes 1.0.0 the one to prune; its dump is stored but not committed yet. The
    // upload either finishes at once (not waiting for the dump) or waits to lock 1.0.0.
    let mut firmware =
        std::pin::pin!(app.upload_firmware(model, Build::new("3.0.0", "r").zip(CODE)));
    let finished_at_once = tokio::select! {
        answer = &mut firmware => Some(answer),
        waiting = a_lock_is_awaited(app, "l.locktype = 'advisory'") => {
            assert!(waiting, "the firmware upload neither finished nor waited for the dump");
            None
        }
    };
    hold.commit().await.unwrap();
    let (status, body) = dump.await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = match finished_at_once {
        Some(answer) => answer,
        None => firmware.await,
    };
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn retention_keeps_the_newest_and_what_pending_dumps_of_this_model_need() {
    TestApp::builder("firmware_retention")
        .env("MAX_FIRMWARES", "2")
        .for_each_stack(async |app| {
            let model = create_model(app, CODE, None).await;
            let other_model = create_model(app, "othermodel", None).await;
            let device = device_of(app, model).await.id;
            let other_device = device_of(app, other_model).await.id;
            let builds: Vec<Build> = (1..=5)
                .map(|i| Build::new(&format!("{i}.0.0"), "r"))
                .collect();

            upload_ok(app, model, CODE, &builds[0]).await;
            upload_ok(app, model, CODE, &builds[1]).await;
            // A PENDING dump of a device of this model needs 1.0.0; one of another model's device
            // reports 2.0.0, which must not protect this model's 2.0.0.
            let pending = insert_coredump(app, device, "1.0.0", "PENDING").await;
            insert_coredump(app, other_device, "2.0.0", "PENDING").await;
            insert_coredump(app, device, "2.0.0", "PARSED").await;

            upload_ok(app, model, CODE, &builds[2]).await;
            assert_eq!(
                stored_versions(app, model).await,
                ["1.0.0", "2.0.0", "3.0.0"]
            );
            upload_ok(app, model, CODE, &builds[3]).await;
            assert_eq!(
                stored_versions(app, model).await,
                ["1.0.0", "3.0.0", "4.0.0"],
                "2.0.0 pruned, 1.0.0 kept for the pending dump"
            );
            assert_eq!(current_version(app, model).await.as_deref(), Some("4.0.0"));
            // The pruned version's objects go through the outbox.
            let gone = eventually(Duration::from_secs(15), || async {
                objects_under(app, &format!("firmware/{CODE}/2.0.0"))
                    .await
                    .is_empty()
            })
            .await;
            assert!(gone, "objects of the pruned version are deleted");
            assert_build_stored(app, CODE, &builds[0]).await;
            assert_build_stored(app, CODE, &builds[2]).await;

            // Once the dump is parsed, 1.0.0 is no longer protected.
            iotsupport::on_pool!(app.db(), |p| sqlx::query(
                "UPDATE coredumps SET parse_status = 'PARSED' WHERE id = $1"
            )
            .bind(pending)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
            upload_ok(app, model, CODE, &builds[4]).await;
            assert_eq!(stored_versions(app, model).await, ["4.0.0", "5.0.0"]);
            let gone = eventually(Duration::from_secs(15), || async {
                objects_under(app, &format!("firmware/{CODE}")).await.len() == 10
            })
            .await;
            assert!(
                gone,
                "{:?}",
                objects_under(app, &format!("firmware/{CODE}")).await
            );

            // Rolling back to an old version and uploading again: the current version is the newest
            // upload and the rolled-back one is pruned only by age, never while it is current.
            let (status, _) = app.set_current_firmware(model, "4.0.0").await;
            assert_eq!(status, 200);
            assert_eq!(stored_versions(app, model).await, ["4.0.0", "5.0.0"]);
        })
        .await;
}

#[tokio::test]
async fn versions_can_be_listed_downloaded_rolled_back_and_deleted() {
    for_each_stack("firmware_versions_api", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        let v2 = Build::new("2.0.0", "two");
        upload_ok(app, model, CODE, &v1).await;
        upload_ok(app, model, CODE, &v2).await;

        let list = versions(app, model).await;
        assert_eq!(version_names(&list), ["2.0.0", "1.0.0"]);
        assert_eq!(list["versions"][0]["is_current"], true);
        assert_eq!(list["versions"][1]["is_current"], false);

        // Every artifact of every version can be downloaded.
        for build in [&v1, &v2] {
            for (name, bytes) in build.artifacts() {
                let r = app
                    .download_firmware_artifact(model, &build.version, name, &[])
                    .await;
                assert_eq!(r.status().as_u16(), 200, "{name}");
                assert_eq!(
                    r.headers()["etag"].to_str().unwrap(),
                    format!("\"{}\"", sha256_hex(bytes))
                );
                assert_eq!(
                    r.headers()["content-disposition"].to_str().unwrap(),
                    format!("attachment; filename={CODE}-{}-{name}", build.version)
                );
                assert_eq!(r.bytes().await.unwrap().as_ref(), bytes);
            }
        }
        let r = app
            .download_firmware_artifact(model, "1.0.0", "passwords", &[])
            .await;
        let (status, body) = response_json(r).await;
        assert_eq!(status, 404, "{body}");
        let r = app
            .download_firmware_artifact(model, "7.7.7", "sdkconfig", &[])
            .await;
        let (status, body) = response_json(r).await;
        assert_eq!(status, 404);
        assert_eq!(
            body["error"],
            format!("FirmwareVersion 7.7.7 of DeviceModel {CODE} was not found")
        );

        // Rollback.
        let (status, body) = app.set_current_firmware(model, "1.0.0").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["firmware_version"], "1.0.0");
        assert_eq!(current_version(app, model).await.as_deref(), Some("1.0.0"));
        let (status, body) = app.set_current_firmware(model, "3.0.0").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
        assert_eq!(current_version(app, model).await.as_deref(), Some("1.0.0"));
        let r = app.download_firmware(model, &[]).await;
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            v1.bin.as_slice(),
            "rolled back"
        );

        // Delete: never the current version.
        let (status, body) = app.delete_firmware_version(model, "1.0.0").await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "CONFLICT");
        let (status, _) = app.delete_firmware_version(model, "2.0.0").await;
        assert_eq!(status, 204);
        assert_eq!(stored_versions(app, model).await, ["1.0.0"]);
        let gone = eventually(Duration::from_secs(15), || async {
            objects_under(app, &format!("firmware/{CODE}/2.0.0"))
                .await
                .is_empty()
        })
        .await;
        assert!(gone);
        assert_build_stored(app, CODE, &v1).await;
        let (status, _) = app.delete_firmware_version(model, "2.0.0").await;
        assert_eq!(status, 404);

        // A deleted version can be uploaded again (its pending deletions are cancelled first).
        upload_ok(app, model, CODE, &v2).await;
        assert_build_stored(app, CODE, &v2).await;
        assert!(iotsupport::outbox::pending(app.db())
            .await
            .unwrap()
            .is_empty());

        // Deleting the model schedules all of its objects.
        let (status, _) = app.delete_model(model).await;
        assert_eq!(status, 204);
        let gone = eventually(Duration::from_secs(15), || async {
            objects_under(app, "firmware").await.is_empty()
        })
        .await;
        assert!(gone);
    })
    .await;
}
