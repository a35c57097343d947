//! Firmware downloads from the store (the firmware cache off, so what reaches the store is
//! observable): the admin's current image with HEAD, ranges fetched as ranged GETs, ETags and
//! conditional requests, an outage as 503; and devices getting their own model's current image.
//! `firmware_cache.rs` tests the same answers served from memory.

use http::Method;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::{ByteRange, Operation};
use serde_json::json;

use crate::firmware_support::*;
use crate::fleet::{create_model, device_of};
use crate::helpers::*;

#[tokio::test]
async fn downloads_support_head_ranges_etags_and_conditional_requests() {
    TestApp::builder("firmware_downloads")
        .env("FIRMWARE_CACHE_BYTES", "0")
        .for_each_stack(async |app| {
            let model = create_model(app, CODE, None).await;
            let (status, body) = response_json(app.download_firmware(model, &[]).await).await;
            assert_eq!(status, 404, "no firmware yet");
            assert_eq!(body["code"], "RECORD_NOT_FOUND");

            let build = Build::new("1.0.0", "dl");
            upload_ok(app, model, CODE, &build).await;
            let size = build.bin.len();
            let etag = format!("\"{}\"", sha256_hex(&build.bin));

            let r = app.download_firmware(model, &[]).await;
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
            // What CI uploaded is never run by a browser as script or page of this origin.
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["content-security-policy"], "sandbox; default-src 'none'");
            assert_eq!(r.bytes().await.unwrap().as_ref(), build.bin.as_slice());

            let path = format!("/api/device-models/{model}/firmware");
            let r = app
                .admin_request(Method::HEAD, app.url(&path))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(
                r.headers()["content-length"].to_str().unwrap(),
                size.to_string()
            );
            assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
            assert!(r.bytes().await.unwrap().is_empty());

            // A range is fetched from the store as a range.
            let r = app
                .download_firmware(model, &[("range", "bytes=16-47")])
                .await;
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
            let rest = format!("bytes={}-", size - 10);
            let r = app
                .download_firmware(model, &[("range", &rest), ("if-range", &etag)])
                .await;
            assert_eq!(r.status().as_u16(), 206);
            assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[size - 10..]);

            let beyond = format!("bytes={}-", size + 5);
            let r = app.download_firmware(model, &[("range", &beyond)]).await;
            assert_eq!(r.status().as_u16(), 416);

            let r = app
                .download_firmware(model, &[("if-none-match", &etag)])
                .await;
            assert_eq!(r.status().as_u16(), 304);

            // If-Range with an old ETag: the whole, new image.
            let r = app
                .download_firmware(model, &[("range", "bytes=0-9"), ("if-range", "\"0000\"")])
                .await;
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(r.bytes().await.unwrap().len(), size);

            // An object store outage is a 503.
            app.faults.inject(Fault::always(Operation::Get));
            app.faults.inject(Fault::always(Operation::Head));
            let (status, body) = response_json(app.download_firmware(model, &[]).await).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
            app.faults.heal();
        })
        .await;
}

#[tokio::test]
async fn devices_get_their_own_models_current_firmware() {
    for_each_stack("firmware_device_ota", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let other = create_model(app, "othermodel", None).await;
        let bare = create_model(app, "nofirmware", None).await;
        let build = Build::new("1.0.0", "mine");
        let other_build = Build::new("9.0.0", "theirs");
        upload_ok(app, model, CODE, &build).await;
        upload_ok(app, other, "othermodel", &other_build).await;
        let device = device_of(app, model).await;

        let r = app
            .device_request(Method::GET, "/api/iot/firmware-version", &device.credential)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["cache-control"].to_str().unwrap(), "no-cache");
        let (status, body) = response_json(r).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"firmware_version": "1.0.0"}));

        let r = app.iot_firmware(&device.credential, &[]).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.headers()["content-disposition"].to_str().unwrap(),
            format!("attachment; filename=firmware-{CODE}.bin")
        );
        let bytes = r.bytes().await.unwrap();
        assert_eq!(bytes.as_ref(), build.bin.as_slice());
        assert_ne!(bytes.as_ref(), other_build.bin.as_slice());

        let r = app
            .iot_firmware(&device.credential, &[("range", "bytes=0-23")])
            .await;
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[..24]);

        // No credentials, wrong secret.
        assert_eq!(app.get("/api/iot/firmware").await.status().as_u16(), 401);
        let wrong = format!("{}.wrong", device.key);
        assert_eq!(app.iot_firmware_version(&wrong).await.0, 401);

        // A device of a model without firmware.
        let bare_device = device_of(app, bare).await;
        assert_eq!(
            app.iot_firmware_version(&bare_device.credential).await.1,
            json!({"firmware_version": null})
        );
        let r = app.iot_firmware(&bare_device.credential, &[]).await;
        let (status, body) = response_json(r).await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
    })
    .await;
}

/// One device has at most `MAX_DOWNLOADS_PER_DEVICE` image downloads in progress: a loop or a
/// leaked credential reading slowly cannot hold every connection. A download counts until its
/// body is sent (here: clients that stop reading a 16 MiB image, more than the socket buffers
/// hold); other devices are not affected, and a slot comes back when a download ends.
#[tokio::test]
async fn a_device_has_a_bounded_number_of_downloads_in_progress() {
    let Some(app) = TestApp::builder("downloads_per_device")
        .env("MAX_DOWNLOADS_PER_DEVICE", "2")
        .spawn(Stack::Embedded)
        .await
    else {
        return;
    };
    let model = create_model(&app, CODE, None).await;
    let small = Build::new("1.0.0", "big");
    let desc = desc_of(&small);
    let big = Build {
        bin: crate::esp_image_synth::esp32_image(&desc, &vec![0u8; 16 << 20], 7),
        ..small
    };
    upload_ok(&app, model, CODE, &big).await;
    let device = device_of(&app, model).await;
    let other = device_of(&app, model).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let response = app.iot_firmware(&device.credential, &[]).await;
        assert_eq!(response.status(), 200);
        stalled.push(response); // its body is never read
    }
    let refused = app.iot_firmware(&device.credential, &[]).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let head = app
        .device_request(Method::HEAD, "/api/iot/firmware", &other.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "another device was refused");
    // A download that ends (here: its client goes away) gives its slot back.
    stalled.pop();
    let back = eventually(std::time::Duration::from_secs(10), || async {
        app.device_request(Method::HEAD, "/api/iot/firmware", &device.credential)
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(back, "the slot of the ended download did not come back");
    drop(stalled);
    app.stop().await;
}

/// The descriptor `Build::new` put into `build`'s image (version and ELF hash), for a bigger
/// image of the same build.
fn desc_of(build: &Build) -> Desc {
    Desc {
        magic: 0xABCD_5432,
        version: build.version.as_bytes().to_vec(),
        project: b"sensor_node",
        idf: b"v5.2.2",
        elf_sha256: sha256(&build.elf),
    }
}
