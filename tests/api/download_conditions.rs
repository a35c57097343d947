//! Edge cases of the one download path, on every source of bytes: an empty suffix range
//! (`Range: bytes=-0`) selects nothing, so it is 416 with `Content-Range: bytes */size` whether the
//! bytes come from the store, from the firmware cache or from a core dump; and `If-None-Match: *`
//! ("any current representation") answers 304 for an object that exists, core dumps (which have
//! no ETag) included.

use iotsupport::storage::Operation;

use crate::client::status_and_json;
use crate::coredumps::upload_ok as upload_dump;
use crate::firmware_support::*;
use crate::fleet::{create_model, device_of, model_with_device};
use crate::helpers::*;

/// Asserts a 416 envelope that names the object's size in `Content-Range`.
async fn assert_unsatisfiable(response: reqwest::Response, size: usize, what: &str) {
    assert_eq!(response.status(), 416, "{what}");
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{size}").as_str(),
        "{what}"
    );
    let (_, body) = status_and_json(response).await;
    assert_eq!(body["code"], "RANGE_NOT_SATISFIABLE", "{what}: {body}");
}

/// Asserts a 206 of the last byte.
async fn assert_last_byte(response: reqwest::Response, content: &[u8], what: &str) {
    assert_eq!(response.status(), 206, "{what}");
    let size = content.len();
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes {}-{}/{size}", size - 1, size - 1).as_str(),
        "{what}"
    );
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &content[size - 1..],
        "{what}"
    );
}

#[tokio::test]
async fn an_empty_suffix_range_is_416_when_the_bytes_come_from_the_store() {
    TestApp::builder("suffix_zero_store")
        .env("FIRMWARE_CACHE_BYTES", "0")
        .for_each_stack(async |app| {
            let model = create_model(app, CODE, None).await;
            let build = Build::new("1.0.0", "suffix");
            upload_ok(app, model, CODE, &build).await;
            let device = device_of(app, model).await;
            let empty_suffix = [("range", "bytes=-0")];

            let r = app.download_firmware(model, &empty_suffix).await;
            assert_unsatisfiable(r, build.bin.len(), "the admin's current image").await;
            let r = app
                .download_firmware_artifact(model, "1.0.0", "firmware.elf", &empty_suffix)
                .await;
            assert_unsatisfiable(r, build.elf.len(), "an artifact").await;
            let r = app.iot_firmware(&device.credential, &empty_suffix).await;
            assert_unsatisfiable(r, build.bin.len(), "a device's OTA image").await;

            let r = app.download_firmware(model, &[("range", "bytes=-1")]).await;
            assert_last_byte(r, &build.bin, "a one-byte suffix").await;
        })
        .await;
}

#[tokio::test]
async fn an_empty_suffix_range_is_416_when_the_image_is_served_from_the_cache() {
    for_each_stack("suffix_zero_cached", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let build = Build::new("1.0.0", "cached");
        upload_ok(app, model, CODE, &build).await;
        let device = device_of(app, model).await;
        // A whole download reads the image into the cache; what follows never reaches the store.
        let whole = app.iot_firmware(&device.credential, &[]).await;
        assert_eq!(whole.status(), 200);
        assert_eq!(whole.bytes().await.unwrap().as_ref(), build.bin.as_slice());
        let gets = app.faults.calls(Operation::Get);

        let r = app
            .iot_firmware(&device.credential, &[("range", "bytes=-0")])
            .await;
        assert_unsatisfiable(r, build.bin.len(), "a device's cached image").await;
        let r = app.download_firmware(model, &[("range", "bytes=-0")]).await;
        assert_unsatisfiable(r, build.bin.len(), "the admin's cached image").await;
        let r = app
            .iot_firmware(&device.credential, &[("range", "bytes=-1")])
            .await;
        assert_last_byte(r, &build.bin, "a one-byte suffix from the cache").await;
        assert_eq!(
            app.faults.calls(Operation::Get),
            gets,
            "served from memory, not from the store"
        );
    })
    .await;
}

#[tokio::test]
async fn an_empty_suffix_range_of_a_core_dump_is_416() {
    for_each_stack("suffix_zero_coredump", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let content: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let id = upload_dump(app, &device, "1.0", &content).await;

        let r = app
            .download_coredump(device.id, id, &[("range", "bytes=-0")])
            .await;
        assert_unsatisfiable(r, content.len(), "a core dump").await;
        let r = app
            .download_coredump(device.id, id, &[("range", "bytes=-1")])
            .await;
        assert_last_byte(r, &content, "a one-byte suffix of a core dump").await;
    })
    .await;
}

#[tokio::test]
async fn if_none_match_star_is_304_for_a_core_dump_that_exists() {
    for_each_stack("coredump_if_none_match_star", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let content: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let id = upload_dump(app, &device, "1.0", &content).await;
        let path = format!("/api/devices/{}/coredumps/{id}/download", device.id);

        let r = app
            .download_coredump(device.id, id, &[("if-none-match", "*")])
            .await;
        assert_eq!(r.status(), 304);
        assert!(r.bytes().await.unwrap().is_empty());
        let r = app
            .admin_request(http::Method::HEAD, app.url(&path))
            .header("if-none-match", "*")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "HEAD too");

        // A dump has no ETag, so a named one never matches: the dump is sent.
        let r = app
            .download_coredump(device.id, id, &[("if-none-match", "\"abc\"")])
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), content.as_slice());
        // An unknown dump is still 404, `*` or not.
        let r = app
            .download_coredump(device.id, id + 1, &[("if-none-match", "*")])
            .await;
        assert_eq!(r.status(), 404);
    })
    .await;
}

#[tokio::test]
async fn if_none_match_star_is_304_for_firmware_as_it_was() {
    TestApp::builder("firmware_if_none_match_star")
        .env("FIRMWARE_CACHE_BYTES", "0")
        .for_each_stack(async |app| {
            let model = create_model(app, CODE, None).await;
            upload_ok(app, model, CODE, &Build::new("1.0.0", "star")).await;
            let r = app
                .download_firmware(model, &[("if-none-match", "*")])
                .await;
            assert_eq!(r.status(), 304);
        })
        .await;
}
