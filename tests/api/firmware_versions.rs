//! Stored firmware: golden rule 1 under S3 failures, idempotent re-uploads and conflicts,
//! retention with the PENDING core-dump guard, the versions API (list, rollback, delete), and
//! downloads for admins and devices (HEAD, ranges, ETags), plus the CI pipeline routes.

use std::time::Duration;

use iotsupport::startup::BuildOptions;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::{ByteRange, Operation};
use serde_json::{json, Value};

use crate::firmware_support::*;
use crate::fleet::{create_device, create_model};
use crate::helpers::*;

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    response_json(app.get(path).await).await
}

async fn versions(app: &TestApp, model: i64) -> Value {
    let (status, body) = get_json(
        app,
        &format!("/api/device-models/{model}/firmware/versions"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn version_names(list: &Value) -> Vec<String> {
    list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_upload_stores_five_objects_a_row_with_hashes_and_becomes_current() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app(stack, "firmware_store").await else {
            continue;
        };
        let model = create_model(&app, CODE, None).await;
        let build = Build::new("1.2.0", "a");
        let (status, body) = upload(&app, model, build.zip(CODE)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"id": model, "code": CODE, "firmware_version": "1.2.0"})
        );
        assert_build_stored(&app, CODE, &build).await;
        assert_eq!(current_version(&app, model).await.as_deref(), Some("1.2.0"));

        let list = versions(&app, model).await;
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
        let (_, m) = get_json(&app, &format!("/api/device-models/{model}")).await;
        assert_eq!(m["firmware_version"], "1.2.0");
        app.stop().await;
    }
}

#[tokio::test]
async fn an_s3_failure_half_way_is_503_and_leaves_no_row_and_no_objects() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app(stack, "firmware_s3_failure").await else {
            continue;
        };
        let model = create_model(&app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        upload_ok(&app, model, CODE, &v1).await;

        let v2 = Build::new("2.0.0", "two");
        app.faults
            .inject(Fault::always(Operation::Put).for_keys_containing("2.0.0/firmware.map"));
        let (status, body) = upload(&app, model, v2.zip(CODE)).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
        assert_nothing_stored(&app, model, Some("1.0.0"), &["1.0.0"]).await;
        assert!(objects_under(&app, &format!("firmware/{CODE}/2.0.0"))
            .await
            .is_empty());
        // The version stored before is untouched.
        assert_build_stored(&app, CODE, &v1).await;

        // Re-uploading the stored version while S3 is down is fine: nothing is rewritten.
        app.faults.inject(Fault::always(Operation::Put));
        upload_ok(&app, model, CODE, &v1).await;
        assert_build_stored(&app, CODE, &v1).await;

        app.faults.heal();
        upload_ok(&app, model, CODE, &v2).await;
        assert_build_stored(&app, CODE, &v2).await;
        assert_eq!(current_version(&app, model).await.as_deref(), Some("2.0.0"));
        app.stop().await;
    }
}

#[tokio::test]
async fn an_identical_reupload_rewrites_nothing_and_different_content_is_409() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app(stack, "firmware_reupload").await else {
            continue;
        };
        let model = create_model(&app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        let v2 = Build::new("2.0.0", "two");
        upload_ok(&app, model, CODE, &v1).await;
        let first_upload = versions(&app, model).await["versions"][0]["uploaded_at"].clone();
        upload_ok(&app, model, CODE, &v2).await;
        assert_eq!(current_version(&app, model).await.as_deref(), Some("2.0.0"));

        let puts = app.faults.calls(Operation::Put);
        tokio::time::sleep(Duration::from_millis(5)).await;
        upload_ok(&app, model, CODE, &v1).await;
        assert_eq!(
            app.faults.calls(Operation::Put),
            puts,
            "no object rewritten"
        );
        assert_eq!(current_version(&app, model).await.as_deref(), Some("1.0.0"));
        let list = versions(&app, model).await;
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
        let (status, body) = upload(&app, model, other.zip(CODE)).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "CONFLICT");
        assert!(body["error"].as_str().unwrap().contains("2.0.0"), "{body}");
        assert_eq!(current_version(&app, model).await.as_deref(), Some("1.0.0"));
        assert_build_stored(&app, CODE, &v2).await;
        assert_eq!(app.faults.calls(Operation::Put), puts);
        app.stop().await;
    }
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

#[tokio::test]
async fn retention_keeps_the_newest_and_what_pending_dumps_of_this_model_need() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_with(
            stack,
            "firmware_retention",
            &[("MAX_FIRMWARES", "2")],
            BuildOptions::default(),
        )
        .await
        else {
            continue;
        };
        let model = create_model(&app, CODE, None).await;
        let other_model = create_model(&app, "othermodel", None).await;
        let device = create_device(&app, model, "{}").await["id"]
            .as_i64()
            .unwrap();
        let other_device = create_device(&app, other_model, "{}").await["id"]
            .as_i64()
            .unwrap();
        let builds: Vec<Build> = (1..=5)
            .map(|i| Build::new(&format!("{i}.0.0"), "r"))
            .collect();

        upload_ok(&app, model, CODE, &builds[0]).await;
        upload_ok(&app, model, CODE, &builds[1]).await;
        // A PENDING dump of a device of this model needs 1.0.0; one of another model's device
        // reports 2.0.0, which must not protect this model's 2.0.0.
        let pending = insert_coredump(&app, device, "1.0.0", "PENDING").await;
        insert_coredump(&app, other_device, "2.0.0", "PENDING").await;
        insert_coredump(&app, device, "2.0.0", "PARSED").await;

        upload_ok(&app, model, CODE, &builds[2]).await;
        assert_eq!(
            stored_versions(&app, model).await,
            ["1.0.0", "2.0.0", "3.0.0"]
        );
        upload_ok(&app, model, CODE, &builds[3]).await;
        assert_eq!(
            stored_versions(&app, model).await,
            ["1.0.0", "3.0.0", "4.0.0"],
            "2.0.0 pruned, 1.0.0 kept for the pending dump"
        );
        assert_eq!(current_version(&app, model).await.as_deref(), Some("4.0.0"));
        // The pruned version's objects go through the outbox.
        let gone = eventually(Duration::from_secs(15), || async {
            objects_under(&app, &format!("firmware/{CODE}/2.0.0"))
                .await
                .is_empty()
        })
        .await;
        assert!(gone, "objects of the pruned version are deleted");
        assert_build_stored(&app, CODE, &builds[0]).await;
        assert_build_stored(&app, CODE, &builds[2]).await;

        // Once the dump is parsed, 1.0.0 is no longer protected.
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE coredumps SET parse_status = 'PARSED' WHERE id = $1"
        )
        .bind(pending)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        upload_ok(&app, model, CODE, &builds[4]).await;
        assert_eq!(stored_versions(&app, model).await, ["4.0.0", "5.0.0"]);
        let gone = eventually(Duration::from_secs(15), || async {
            objects_under(&app, &format!("firmware/{CODE}")).await.len() == 10
        })
        .await;
        assert!(
            gone,
            "{:?}",
            objects_under(&app, &format!("firmware/{CODE}")).await
        );

        // Rolling back to an old version and uploading again: the current version is the newest
        // upload and the rolled-back one is pruned only by age, never while it is current.
        let (status, _) = put_current(&app, model, "4.0.0").await;
        assert_eq!(status, 200);
        assert_eq!(stored_versions(&app, model).await, ["4.0.0", "5.0.0"]);
        app.stop().await;
    }
}

async fn put_current(app: &TestApp, model: i64, version: &str) -> (u16, Value) {
    let r = app
        .client
        .put(app.url(&format!("/api/device-models/{model}/firmware/current")))
        .json(&json!({ "version": version }))
        .send()
        .await
        .unwrap();
    response_json(r).await
}

async fn delete(app: &TestApp, path: &str) -> (u16, Value) {
    response_json(app.client.delete(app.url(path)).send().await.unwrap()).await
}

#[tokio::test]
async fn versions_can_be_listed_downloaded_rolled_back_and_deleted() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app(stack, "firmware_versions_api").await else {
            continue;
        };
        let model = create_model(&app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        let v2 = Build::new("2.0.0", "two");
        upload_ok(&app, model, CODE, &v1).await;
        upload_ok(&app, model, CODE, &v2).await;

        let list = versions(&app, model).await;
        assert_eq!(version_names(&list), ["2.0.0", "1.0.0"]);
        assert_eq!(list["versions"][0]["is_current"], true);
        assert_eq!(list["versions"][1]["is_current"], false);

        // Every artifact of every version can be downloaded.
        for build in [&v1, &v2] {
            for (name, bytes) in build.artifacts() {
                let r = app
                    .get(&format!(
                        "/api/device-models/{model}/firmware/{}/{name}",
                        build.version
                    ))
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
        let (status, body) = get_json(
            &app,
            &format!("/api/device-models/{model}/firmware/1.0.0/passwords"),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = get_json(
            &app,
            &format!("/api/device-models/{model}/firmware/7.7.7/sdkconfig"),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(
            body["error"],
            format!("FirmwareVersion 7.7.7 of DeviceModel {CODE} was not found")
        );

        // Rollback.
        let (status, body) = put_current(&app, model, "1.0.0").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["firmware_version"], "1.0.0");
        assert_eq!(current_version(&app, model).await.as_deref(), Some("1.0.0"));
        let (status, body) = put_current(&app, model, "3.0.0").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
        assert_eq!(current_version(&app, model).await.as_deref(), Some("1.0.0"));
        let r = app
            .get(&format!("/api/device-models/{model}/firmware"))
            .await;
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            v1.bin.as_slice(),
            "rolled back"
        );

        // Delete: never the current version.
        let (status, body) =
            delete(&app, &format!("/api/device-models/{model}/firmware/1.0.0")).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "CONFLICT");
        let (status, _) = delete(&app, &format!("/api/device-models/{model}/firmware/2.0.0")).await;
        assert_eq!(status, 204);
        assert_eq!(stored_versions(&app, model).await, ["1.0.0"]);
        let gone = eventually(Duration::from_secs(15), || async {
            objects_under(&app, &format!("firmware/{CODE}/2.0.0"))
                .await
                .is_empty()
        })
        .await;
        assert!(gone);
        assert_build_stored(&app, CODE, &v1).await;
        let (status, _) = delete(&app, &format!("/api/device-models/{model}/firmware/2.0.0")).await;
        assert_eq!(status, 404);

        // A deleted version can be uploaded again (its pending deletions are cancelled first).
        upload_ok(&app, model, CODE, &v2).await;
        assert_build_stored(&app, CODE, &v2).await;
        assert!(iotsupport::outbox::pending(app.db())
            .await
            .unwrap()
            .is_empty());

        // Deleting the model schedules all of its objects.
        let (status, _) = delete(&app, &format!("/api/device-models/{model}")).await;
        assert_eq!(status, 204);
        let gone = eventually(Duration::from_secs(15), || async {
            objects_under(&app, "firmware").await.is_empty()
        })
        .await;
        assert!(gone);
        app.stop().await;
    }
}

#[tokio::test]
async fn downloads_support_head_ranges_etags_and_conditional_requests() {
    for stack in ALL_STACKS {
        // Without the firmware cache, so what reaches the store is observable: a range must be a
        // ranged GET, an outage a 503. `firmware_cache.rs` tests the same answers from memory.
        let Some(app) = spawn_app_with(
            stack,
            "firmware_downloads",
            &[("FIRMWARE_CACHE_BYTES", "0")],
            BuildOptions::default(),
        )
        .await
        else {
            continue;
        };
        let model = create_model(&app, CODE, None).await;
        let path = format!("/api/device-models/{model}/firmware");
        let (status, body) = get_json(&app, &path).await;
        assert_eq!(status, 404, "no firmware yet");
        assert_eq!(body["code"], "RECORD_NOT_FOUND");

        let build = Build::new("1.0.0", "dl");
        upload_ok(&app, model, CODE, &build).await;
        let size = build.bin.len();
        let etag = format!("\"{}\"", sha256_hex(&build.bin));

        let r = app.get(&path).await;
        assert_eq!(r.status().as_u16(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-length"].to_str().unwrap(), size.to_string());
        assert_eq!(
            h["content-type"].to_str().unwrap(),
            "application/octet-stream"
        );
        assert_eq!(
            h["content-disposition"].to_str().unwrap(),
            format!("attachment; filename=firmware-{CODE}.bin")
        );
        assert_eq!(h["etag"].to_str().unwrap(), etag);
        assert_eq!(r.bytes().await.unwrap().as_ref(), build.bin.as_slice());

        let r = app.client.head(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            size.to_string()
        );
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        assert!(r.bytes().await.unwrap().is_empty());

        // A range is fetched from the store as a range.
        let r = app
            .client
            .get(app.url(&path))
            .header("range", "bytes=16-47")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes 16-47/{size}")
        );
        assert_eq!(r.headers()["content-length"].to_str().unwrap(), "32");
        assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[16..48]);
        let (key, range) = app.faults.gets().last().cloned().unwrap();
        assert_eq!(key, format!("firmware/{CODE}/1.0.0/firmware.bin"));
        assert_eq!(range, Some(ByteRange::Bounded { start: 16, end: 48 }));

        // A resumed download: the rest of the image.
        let r = app
            .client
            .get(app.url(&path))
            .header("range", format!("bytes={}-", size - 10))
            .header("if-range", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[size - 10..]);

        let r = app
            .client
            .get(app.url(&path))
            .header("range", format!("bytes={}-", size + 5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 416);

        let r = app
            .client
            .get(app.url(&path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 304);

        // If-Range with an old ETag: the whole, new image.
        let r = app
            .client
            .get(app.url(&path))
            .header("range", "bytes=0-9")
            .header("if-range", "\"0000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), size);

        // An object store outage is a 503.
        app.faults.inject(Fault::always(Operation::Get));
        app.faults.inject(Fault::always(Operation::Head));
        let (status, body) = get_json(&app, &path).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
        app.faults.heal();
        app.stop().await;
    }
}

pub fn device_auth(device: &Value) -> String {
    format!(
        "Bearer {}.{}",
        device["key"].as_str().unwrap(),
        device["device_secret"].as_str().unwrap()
    )
}

#[tokio::test]
async fn devices_get_their_own_models_current_firmware() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app(stack, "firmware_device_ota").await else {
            continue;
        };
        let model = create_model(&app, CODE, None).await;
        let other = create_model(&app, "othermodel", None).await;
        let bare = create_model(&app, "nofirmware", None).await;
        let build = Build::new("1.0.0", "mine");
        let other_build = Build::new("9.0.0", "theirs");
        upload_ok(&app, model, CODE, &build).await;
        upload_ok(&app, other, "othermodel", &other_build).await;
        let device = create_device(&app, model, "{}").await;
        let auth = device_auth(&device);

        let r = app
            .client
            .get(app.url("/api/iot/firmware-version"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["cache-control"].to_str().unwrap(), "no-cache");
        let (status, body) = response_json(r).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"firmware_version": "1.0.0"}));

        let r = app
            .client
            .get(app.url("/api/iot/firmware"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.headers()["content-disposition"].to_str().unwrap(),
            format!("attachment; filename=firmware-{CODE}.bin")
        );
        let bytes = r.bytes().await.unwrap();
        assert_eq!(bytes.as_ref(), build.bin.as_slice());
        assert_ne!(bytes.as_ref(), other_build.bin.as_slice());

        let r = app
            .client
            .get(app.url("/api/iot/firmware"))
            .header("authorization", &auth)
            .header("range", "bytes=0-23")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[..24]);

        // No credentials, wrong secret.
        assert_eq!(app.get("/api/iot/firmware").await.status().as_u16(), 401);
        let r = app
            .client
            .get(app.url("/api/iot/firmware-version"))
            .header(
                "authorization",
                format!("Bearer {}.wrong", device["key"].as_str().unwrap()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);

        // A device of a model without firmware.
        let bare_device = create_device(&app, bare, "{}").await;
        let bare_auth = device_auth(&bare_device);
        let r = app
            .client
            .get(app.url("/api/iot/firmware-version"))
            .header("authorization", &bare_auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response_json(r).await.1, json!({"firmware_version": null}));
        let r = app
            .client
            .get(app.url("/api/iot/firmware"))
            .header("authorization", &bare_auth)
            .send()
            .await
            .unwrap();
        let (status, body) = response_json(r).await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
        app.stop().await;
    }
}

const TOKEN: &str = "pipeline-test-token-0123456789";

#[tokio::test]
async fn the_pipeline_uploads_by_model_code_with_the_admin_token() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_with(
            stack,
            "firmware_pipeline",
            &[("ADMIN_TOKEN", TOKEN)],
            BuildOptions::default(),
        )
        .await
        else {
            continue;
        };
        let bearer = format!("Bearer {TOKEN}");
        let r = app
            .client
            .post(app.url("/api/device-models"))
            .header("authorization", &bearer)
            .json(&json!({"code": CODE, "name": "Temp"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let build = Build::new("3.1.4", "ci");
        let url = app.url(&format!("/api/pipeline/models/{CODE}/firmware"));

        let r = app
            .client
            .post(&url)
            .body(build.zip(CODE))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let r = app
            .client
            .post(&url)
            .header("authorization", "Bearer not-the-token-at-all")
            .body(build.zip(CODE))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);

        let r = app
            .client
            .post(&url)
            .header("authorization", &bearer)
            .header("content-type", "application/zip")
            .body(build.zip(CODE))
            .send()
            .await
            .unwrap();
        let (status, body) = response_json(r).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["code"], CODE);
        assert_eq!(body["firmware_version"], "3.1.4");
        assert_build_stored(&app, CODE, &build).await;

        let version_url = app.url(&format!("/api/pipeline/models/{CODE}/firmware-version"));
        assert_eq!(
            app.client
                .get(&version_url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            401
        );
        let r = app
            .client
            .get(&version_url)
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response_json(r).await.1,
            json!({"code": CODE, "firmware_version": "3.1.4"})
        );

        let r = app
            .client
            .get(app.url("/api/pipeline/models/nosuchmodel/firmware-version"))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        let (status, body) = response_json(r).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"], "DeviceModel nosuchmodel was not found");
        let r = app
            .client
            .post(app.url("/api/pipeline/models/nosuchmodel/firmware"))
            .header("authorization", &bearer)
            .body(build.zip("nosuchmodel"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);

        // The admin routes want the token too.
        let r = app
            .client
            .get(app.url("/api/device-models/1/firmware/versions"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        app.stop().await;
    }
}

fn testdata() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("IOTSUPPORT_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/esp")
        });
    dir.join("MANIFEST.md").exists().then_some(dir)
}

/// A real ESP32-C3 app image whose descriptor is made to name a real firmware ELF (as
/// `esptool elf2image` would have), with a map file large enough to be spooled to disk and
/// uploaded as a multipart object.
#[tokio::test]
async fn a_bundle_from_a_real_image_and_elf_round_trips() {
    let Some(data) = testdata() else {
        eprintln!("SKIP: a_bundle_from_a_real_image_and_elf_round_trips: ESP test data not found (set IOTSUPPORT_TESTDATA)");
        return;
    };
    let image = std::fs::read(data.join("images/esp32c3_hello_world_app/hello_world.bin")).unwrap();
    let elf = std::fs::read(data.join("coredump/esp32c3_binconfig_abort/esp32c3_bin.elf")).unwrap();
    let parsed = esp_image::parse_app_image(&image).unwrap();
    let bin = patch_real_image(&image, parsed.app_desc_offset + 144, &sha256(&elf));
    let version = parsed.app_desc.version.clone();
    let build = Build {
        version: version.clone(),
        bin,
        elf,
        // Hex noise: it does not compress below a few MiB, so the request body is larger than
        // axum's default body limit, and uncompressed it is larger than what is kept in memory.
        map: {
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            (0..9 * 1024 * 1024u32)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b"0123456789abcdef"[(x % 16) as usize]
                })
                .collect()
        },
        sdkconfig: b"CONFIG_IDF_TARGET=\"esp32c3\"\n".to_vec(),
        version_json: version_json(&version),
    };
    assert!(build.zip("hello_world").len() > 4 * 1024 * 1024);
    for stack in ALL_STACKS {
        let Some(app) = spawn_app(stack, "firmware_real_image").await else {
            continue;
        };
        let model = create_model(&app, "hello_world", None).await;
        upload_ok(&app, model, "hello_world", &build).await;
        assert_build_stored(&app, "hello_world", &build).await;
        let list = versions(&app, model).await;
        let v = &list["versions"][0];
        assert_eq!(v["chip"], "esp32c3");
        assert_eq!(v["project_name"], parsed.app_desc.project_name.as_str());
        assert_eq!(v["idf_version"], parsed.app_desc.idf_ver.as_str());
        assert_eq!(v["app_elf_sha256"], sha256_hex(&build.elf));
        app.stop().await;
    }
}

#[tokio::test]
async fn every_firmware_route_is_in_the_openapi_document() {
    let Some(app) = spawn_app(Stack::Embedded, "firmware_openapi").await else {
        return;
    };
    let (_, doc) = get_json(&app, "/api/docs/openapi.json").await;
    for (path, method) in [
        ("/api/device-models/{id}/firmware", "post"),
        ("/api/device-models/{id}/firmware", "get"),
        ("/api/device-models/{id}/firmware/versions", "get"),
        ("/api/device-models/{id}/firmware/current", "put"),
        ("/api/device-models/{id}/firmware/{version}", "delete"),
        (
            "/api/device-models/{id}/firmware/{version}/{artifact}",
            "get",
        ),
        ("/api/pipeline/models/{code}/firmware", "post"),
        ("/api/pipeline/models/{code}/firmware-version", "get"),
        ("/api/iot/firmware", "get"),
        ("/api/iot/firmware-version", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(op["security"].is_array(), "{method} {path} states its role");
    }
    assert!(doc["components"]["schemas"]["FirmwareVersionList"].is_object());
    app.stop().await;
}
