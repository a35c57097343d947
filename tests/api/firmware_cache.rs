//! The device hot path's caches: firmware images served from memory (keyed by SHA-256, within a
//! byte budget, filled by one whole read) and the short-lived device credential / current-image
//! lookups, including what another process sharing the database sees and when.

use std::time::Duration;

use http::Method;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::{ByteRange, Operation};
use serde_json::json;

use crate::firmware_support::*;
use crate::fleet::{create_model, device_of, TestDevice};
use crate::helpers::*;

/// The lookup TTL used by the two-process tests: short, so they wait little.
const TTL: &str = "0.5";
const PAST_TTL: Duration = Duration::from_millis(800);

fn whole_reads(app: &TestApp, key: &str) -> usize {
    app.faults
        .gets()
        .iter()
        .filter(|(k, range)| k == key && range.is_none())
        .count()
}

#[tokio::test]
async fn a_cached_image_is_served_from_memory_with_every_header_and_no_store_request() {
    for_each_stack("cache_hit", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let build = Build::new("1.0.0", "cached");
        upload_ok(app, model, CODE, &build).await;
        let device = device_of(app, model).await;
        let auth = device.credential.clone();
        let sha = sha256_hex(&build.bin);
        let etag = format!("\"{sha}\"");
        let size = build.bin.len();

        // The first whole download waits for the cache's one read of the image.
        let r = app.iot_firmware(&auth, &[]).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), build.bin.as_slice());
        assert!(app.state.caches.firmware.contains(&sha));
        let gets = app.faults.gets().len();
        let heads = app.faults.calls(Operation::Head);

        let r = app.iot_firmware(&auth, &[]).await;
        assert_eq!(r.status().as_u16(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-length"].to_str().unwrap(), size.to_string());
        assert_eq!(h["content-type"], "application/octet-stream");
        assert_eq!(
            h["content-disposition"].to_str().unwrap(),
            format!("attachment; filename=firmware-{CODE}.bin")
        );
        assert_eq!(h["etag"].to_str().unwrap(), etag);
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(r.bytes().await.unwrap().as_ref(), build.bin.as_slice());

        for (range, start, end) in [
            ("bytes=16-47".to_string(), 16, 48),
            ("bytes=-10".to_string(), size - 10, size),
            (format!("bytes={}-", size - 5), size - 5, size),
            (format!("bytes=100-{}", size + 500), 100, size),
        ] {
            let r = app.iot_firmware(&auth, &[("range", range.as_str())]).await;
            assert_eq!(r.status().as_u16(), 206, "{range}");
            let h = r.headers().clone();
            assert_eq!(
                h["content-range"].to_str().unwrap(),
                format!("bytes {start}-{}/{size}", end - 1),
                "{range}"
            );
            assert_eq!(
                h["content-length"].to_str().unwrap(),
                (end - start).to_string()
            );
            assert_eq!(h["etag"].to_str().unwrap(), etag);
            assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[start..end]);
        }

        let r = app
            .iot_firmware(&auth, &[("range", format!("bytes={size}-").as_str())])
            .await;
        assert_eq!(r.status().as_u16(), 416);
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes */{size}")
        );

        let r = app
            .iot_firmware(&auth, &[("if-none-match", etag.as_str())])
            .await;
        assert_eq!(r.status().as_u16(), 304);
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);

        let r = app
            .iot_firmware(
                &auth,
                &[("range", "bytes=0-9"), ("if-range", etag.as_str())],
            )
            .await;
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[..10]);
        let r = app
            .iot_firmware(&auth, &[("range", "bytes=0-9"), ("if-range", "\"0000\"")])
            .await;
        assert_eq!(
            r.status().as_u16(),
            200,
            "If-Range with an old ETag: all of it"
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), build.bin.as_slice());

        let r = app
            .device_request(Method::HEAD, "/api/iot/firmware", &auth)
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

        // The admin routes to the same image share the cache.
        for path in [
            format!("/api/device-models/{model}/firmware"),
            format!("/api/device-models/{model}/firmware/1.0.0/firmware.bin"),
        ] {
            let r = app.get(&path).await;
            assert_eq!(r.status().as_u16(), 200, "{path}");
            assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
            assert_eq!(r.bytes().await.unwrap().as_ref(), build.bin.as_slice());
        }

        assert_eq!(
            app.faults.gets().len(),
            gets,
            "served without reading the store"
        );
        assert_eq!(app.faults.calls(Operation::Head), heads);

        // Even with the store down.
        app.faults.inject(Fault::always(Operation::Get));
        app.faults.inject(Fault::always(Operation::Head));
        let r = app.iot_firmware(&auth, &[("range", "bytes=0-3")]).await;
        assert_eq!(r.status().as_u16(), 206);
        app.faults.heal();

        let metrics = app.metrics().await;
        for name in [
            "firmware_cache_hits_total",
            "firmware_cache_misses_total",
            "firmware_cache_fills_total",
            "firmware_cache_bytes",
            "lookup_cache_hits_total",
        ] {
            assert!(metrics.contains(name), "{name} missing from /metrics");
        }
    })
    .await;
}

#[tokio::test]
async fn a_ranged_miss_reads_only_its_range_and_the_image_is_read_whole_once() {
    for_each_stack("cache_ranged_miss", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let build = Build::new("1.0.0", "ranged");
        upload_ok(app, model, CODE, &build).await;
        let device = device_of(app, model).await;
        let auth = device.credential.clone();
        let sha = sha256_hex(&build.bin);
        let key = format!("firmware/{CODE}/1.0.0/firmware.bin");
        let before = app.faults.gets().len();

        let r = app.iot_firmware(&auth, &[("range", "bytes=0-23")]).await;
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &build.bin[..24]);
        // The fill runs on its own; wait for it (this is not a timing assertion: it only needs to
        // finish at some point).
        let cache = app.state.caches.firmware.clone();
        assert!(eventually(Duration::from_secs(15), || async { cache.contains(&sha) }).await);

        let reads: Vec<_> = app.faults.gets()[before..].to_vec();
        assert_eq!(reads.len(), 2, "{reads:?}");
        assert!(reads.contains(&(key.clone(), Some(ByteRange::Bounded { start: 0, end: 24 }))));
        assert_eq!(whole_reads(app, &key), 1, "{reads:?}");

        let size = build.bin.len();
        for start in [100, size / 2, size - 100] {
            let range = format!("bytes={start}-{}", start + 99);
            let r = app.iot_firmware(&auth, &[("range", range.as_str())]).await;
            assert_eq!(r.status().as_u16(), 206);
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                &build.bin[start..start + 100]
            );
        }
        assert_eq!(
            app.faults.gets().len(),
            before + 2,
            "later ranges come from memory"
        );
    })
    .await;
}

#[tokio::test]
async fn a_version_deleted_and_uploaded_again_with_other_content_is_never_served_stale() {
    for_each_stack("cache_reupload", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let first = Build::new("1.0.0", "first");
        let second = Build::new("2.0.0", "second");
        let again = Build::new("1.0.0", "uploaded again");
        assert_ne!(first.bin, again.bin);
        let device = device_of(app, model).await;
        let auth = device.credential.clone();

        upload_ok(app, model, CODE, &first).await;
        let r = app.iot_firmware(&auth, &[]).await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), first.bin.as_slice());
        assert!(app.state.caches.firmware.contains(&sha256_hex(&first.bin)));

        // After each change made through this process, devices see it at once (no waiting).
        upload_ok(app, model, CODE, &second).await;
        let r = app.iot_firmware(&auth, &[]).await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), second.bin.as_slice());
        assert_eq!(app.delete_firmware_version(model, "1.0.0").await.0, 204);
        let r = app.iot_firmware(&auth, &[]).await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), second.bin.as_slice());
        upload_ok(app, model, CODE, &again).await;

        assert_eq!(
            app.iot_firmware_version(&auth).await.1,
            json!({"firmware_version": "1.0.0"})
        );
        let etag = format!("\"{}\"", sha256_hex(&again.bin));
        let r = app.iot_firmware(&auth, &[]).await;
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        assert_eq!(r.bytes().await.unwrap().as_ref(), again.bin.as_slice());
        let r = app.iot_firmware(&auth, &[("range", "bytes=0-99")]).await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), &again.bin[..100]);
        let r = app
            .download_firmware_artifact(model, "1.0.0", "firmware.bin", &[])
            .await;
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        assert_eq!(r.bytes().await.unwrap().as_ref(), again.bin.as_slice());
    })
    .await;
}

#[tokio::test]
async fn another_process_serves_consistent_bytes_and_the_new_image_within_the_ttl() {
    let Some((a, b)) = spawn_twins(
        Stack::Production,
        "cache_reupload_twins",
        &[("DEVICE_LOOKUP_CACHE_SECONDS", TTL)],
    )
    .await
    else {
        return;
    };
    let model = create_model(&a, CODE, None).await;
    let first = Build::new("1.0.0", "first");
    let second = Build::new("2.0.0", "second");
    let again = Build::new("1.0.0", "uploaded again");
    let device = device_of(&a, model).await;
    let auth = device.credential.clone();
    upload_ok(&a, model, CODE, &first).await;
    let r = a.iot_firmware(&auth, &[]).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), first.bin.as_slice());

    // Process B replaces 1.0.0 while A holds its image and lookups.
    upload_ok(&b, model, CODE, &second).await;
    assert_eq!(b.delete_firmware_version(model, "1.0.0").await.0, 204);
    upload_ok(&b, model, CODE, &again).await;

    // Within the TTL A may still answer with the old image, but bytes and ETag always agree.
    let r = a.iot_firmware(&auth, &[]).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&bytes)));
    assert!(bytes.as_ref() == first.bin.as_slice() || bytes.as_ref() == again.bin.as_slice());

    tokio::time::sleep(PAST_TTL).await;
    let r = a.iot_firmware(&auth, &[]).await;
    assert_eq!(
        r.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", sha256_hex(&again.bin))
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), again.bin.as_slice());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_byte_budget_is_respected_and_larger_images_are_streamed() {
    let one = Build::new("1.0.0", "a");
    let two = Build::new("2.0.0", "bb");
    // Room for one image, not two.
    let budget = one.bin.len().max(two.bin.len()) + one.bin.len() / 2;
    TestApp::builder("cache_budget")
        .env("FIRMWARE_CACHE_BYTES", &budget.to_string())
        .for_each_stack(async |app| {
            let cache = app.state.caches.firmware.clone();
            let model = create_model(app, CODE, None).await;
            let device = device_of(app, model).await;
            upload_ok(app, model, CODE, &one).await;
            let r = app.iot_firmware(&device.credential, &[]).await;
            assert_eq!(r.bytes().await.unwrap().as_ref(), one.bin.as_slice());
            assert_eq!(cache.usage(), (1, one.bin.len() as u64));

            upload_ok(app, model, CODE, &two).await;
            let r = app.iot_firmware(&device.credential, &[]).await;
            assert_eq!(r.bytes().await.unwrap().as_ref(), two.bin.as_slice());
            assert_eq!(
                cache.usage(),
                (1, two.bin.len() as u64),
                "the older image made room"
            );
            assert!(!cache.contains(&sha256_hex(&one.bin)));
            assert!(cache.usage().1 <= budget as u64);
        })
        .await;

    // A budget smaller than the image: it is streamed every time, never cached.
    TestApp::builder("cache_too_large")
        .env("FIRMWARE_CACHE_BYTES", &(one.bin.len() - 1).to_string())
        .for_each_stack(async |app| {
            let model = create_model(app, CODE, None).await;
            let device = device_of(app, model).await;
            upload_ok(app, model, CODE, &one).await;
            let key = format!("firmware/{CODE}/1.0.0/firmware.bin");
            for _ in 0..2 {
                let r = app.iot_firmware(&device.credential, &[]).await;
                assert_eq!(r.status().as_u16(), 200);
                assert_eq!(r.bytes().await.unwrap().as_ref(), one.bin.as_slice());
            }
            assert_eq!(whole_reads(app, &key), 2, "each download read the store");
            assert_eq!(app.state.caches.firmware.usage(), (0, 0));
        })
        .await;
}

/// More images in use than the budget holds: a ranged miss does not evict an image another model's
/// devices used within the last minute (it is served by a ranged read, and no whole read of its
/// image starts), so the cache does not cycle; a whole-image request still takes the room. (The
/// test's requests follow each other within a minute: that is the only time it relies on.)
#[tokio::test]
async fn a_ranged_miss_does_not_evict_an_image_in_use_and_a_whole_request_does() {
    let one = Build::new("1.0.0", "a");
    let two = Build::new("2.0.0", "bb");
    let budget = one.bin.len().max(two.bin.len()) + one.bin.len() / 2;
    TestApp::builder("cache_churn")
        .env("FIRMWARE_CACHE_BYTES", &budget.to_string())
        .for_each_stack(async |app| {
            let cache = app.state.caches.firmware.clone();
            let a_model = create_model(app, CODE, None).await;
            let b_model = create_model(app, "other", None).await;
            upload_ok(app, a_model, CODE, &one).await;
            upload_ok(app, b_model, "other", &two).await;
            let a = device_of(app, a_model).await;
            let b = device_of(app, b_model).await;
            let a_key = format!("firmware/{CODE}/1.0.0/firmware.bin");
            let b_key = "firmware/other/2.0.0/firmware.bin";
            let (one_sha, two_sha) = (sha256_hex(&one.bin), sha256_hex(&two.bin));

            let r = app.iot_firmware(&a.credential, &[]).await;
            assert_eq!(r.bytes().await.unwrap().as_ref(), one.bin.as_slice());
            assert!(cache.contains(&one_sha));

            let r = app
                .iot_firmware(&b.credential, &[("range", "bytes=0-23")])
                .await;
            assert_eq!(r.status().as_u16(), 206);
            assert_eq!(r.bytes().await.unwrap().as_ref(), &two.bin[..24]);
            // A fill would have started by now and is never awaited by the request: give one
            // every chance to show up, then check that none did.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(cache.contains(&one_sha), "the image in use was evicted");
            assert!(!cache.contains(&two_sha));
            assert_eq!(whole_reads(app, b_key), 0, "a whole read for a range");

            let r = app.iot_firmware(&b.credential, &[]).await;
            assert_eq!(r.bytes().await.unwrap().as_ref(), two.bin.as_slice());
            assert!(cache.contains(&two_sha) && !cache.contains(&one_sha));
            assert_eq!(whole_reads(app, b_key), 1);

            let r = app
                .iot_firmware(&a.credential, &[("range", "bytes=0-23")])
                .await;
            assert_eq!(r.status().as_u16(), 206);
            assert_eq!(r.bytes().await.unwrap().as_ref(), &one.bin[..24]);
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(cache.contains(&two_sha), "the image in use was evicted");
            assert_eq!(whole_reads(app, &a_key), 1, "read whole again for a range");
            assert!(cache.usage().1 <= budget as u64);
        })
        .await;
}

/// A store slow to start sending: a whole download that misses waits for the image's fill only
/// `WHOLE_FILL_WAIT` (2 s), then streams the image itself, where it would otherwise have sent
/// nothing until the whole image had been read (an OTA client gives up on a silent server).
#[tokio::test]
async fn a_whole_download_does_not_wait_long_for_a_slow_fill() {
    for_each_stack("cache_slow_fill", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let build = Build::new("1.0.0", "slow");
        upload_ok(app, model, CODE, &build).await;
        let device = device_of(app, model).await;
        let key = format!("firmware/{CODE}/1.0.0/firmware.bin");
        // The fill's read answers after 20 s; the stream's read after it, at once.
        app.faults.slow_whole_gets(Duration::from_secs(20), 1);
        let r = app.iot_firmware(&device.credential, &[]).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), build.bin.as_slice());
        assert_eq!(
            whole_reads(app, &key),
            2,
            "served by the fill, not by a stream of its own"
        );
        assert!(!app.state.caches.firmware.contains(&sha256_hex(&build.bin)));
    })
    .await;
}

/// A stored image that no longer matches its row (changed or damaged in the bucket) is not sent
/// whole under the row's ETag as if it were the image: the download is a 500 saying so, and for a
/// while another one is refused without reading the object again.
#[tokio::test]
async fn a_stored_image_that_does_not_match_its_record_is_not_sent_whole() {
    for_each_stack("cache_mismatch", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let build = Build::new("1.0.0", "intact");
        upload_ok(app, model, CODE, &build).await;
        let device = device_of(app, model).await;
        let key = format!("firmware/{CODE}/1.0.0/firmware.bin");
        let mut damaged = build.bin.clone();
        damaged[100] ^= 0xff;
        app.state
            .storage
            .put(
                &iotsupport::storage::ObjectKey::parse(&key).unwrap(),
                bytes::Bytes::from(damaged),
            )
            .await
            .unwrap();
        let before = whole_reads(app, &key);
        let r = app.iot_firmware(&device.credential, &[]).await;
        assert_eq!(r.status().as_u16(), 500);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("does not match its record")),
            "{body}"
        );
        assert_eq!(whole_reads(app, &key), before + 1);
        let r = app.iot_firmware(&device.credential, &[]).await;
        assert_eq!(r.status().as_u16(), 500);
        assert_eq!(whole_reads(app, &key), before + 1, "read again at once");
        assert!(!app.state.caches.firmware.contains(&sha256_hex(&build.bin)));
    })
    .await;
}

/// Replaces the device's secret through `app`; returns the new credential.
async fn replace_secret(app: &TestApp, device: &TestDevice) -> String {
    let (status, body) = app.replace_device_secret(device.id).await;
    assert_eq!(status, 200, "{body}");
    format!("{}.{}", device.key, body["device_secret"].as_str().unwrap())
}

#[tokio::test]
async fn a_replaced_secret_or_deleted_device_is_refused_at_once_by_the_process_that_changed_it() {
    for_each_stack("cache_credentials", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let device = device_of(app, model).await;
        let old = device.credential.clone();
        assert_eq!(app.iot_firmware_version(&old).await.0, 200);
        assert_eq!(
            app.iot_firmware_version(&old).await.0,
            200,
            "now from the cache"
        );

        let new = replace_secret(app, &device).await;
        assert_eq!(app.iot_firmware_version(&old).await.0, 401);
        assert_eq!(app.iot_firmware_version(&new).await.0, 200);

        assert_eq!(app.delete_device(device.id).await.0, 204);
        assert_eq!(app.iot_firmware_version(&new).await.0, 401);
    })
    .await;
}

#[tokio::test]
async fn another_process_refuses_a_replaced_secret_or_deleted_device_within_the_ttl() {
    let Some((a, b)) = spawn_twins(
        Stack::Production,
        "cache_credentials_twins",
        &[("DEVICE_LOOKUP_CACHE_SECONDS", TTL)],
    )
    .await
    else {
        return;
    };
    let model = create_model(&a, CODE, None).await;
    let device = device_of(&a, model).await;
    let old = device.credential.clone();
    assert_eq!(a.iot_firmware_version(&old).await.0, 200);

    let new = replace_secret(&b, &device).await;
    assert_eq!(b.iot_firmware_version(&old).await.0, 401);
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(a.iot_firmware_version(&old).await.0, 401);
    assert_eq!(a.iot_firmware_version(&new).await.0, 200);

    assert_eq!(b.delete_device(device.id).await.0, 204);
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(a.iot_firmware_version(&new).await.0, 401);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn with_the_lookup_cache_off_every_request_asks_the_database() {
    let Some((a, b)) = spawn_twins(
        Stack::Production,
        "cache_off_twins",
        &[("DEVICE_LOOKUP_CACHE_SECONDS", "0")],
    )
    .await
    else {
        return;
    };
    let model = create_model(&a, CODE, None).await;
    let device = device_of(&a, model).await;
    let old = device.credential.clone();
    assert_eq!(a.iot_firmware_version(&old).await.0, 200);
    let new = replace_secret(&b, &device).await;
    assert_eq!(a.iot_firmware_version(&old).await.0, 401);
    assert_eq!(a.iot_firmware_version(&new).await.0, 200);
    assert!(a.state.caches.device_credentials.is_empty());
    a.stop().await;
    b.stop().await;
}

/// With the lookup cache off the OTA routes read the device's credential and its model's current
/// image in one query: each device still gets its own model's image and version, and a version
/// uploaded through another process is served at once (ranges included).
#[tokio::test]
async fn with_the_lookup_cache_off_each_device_gets_its_models_current_image_at_once() {
    let Some((a, b)) = spawn_twins(
        Stack::Production,
        "cache_off_images",
        &[
            ("DEVICE_LOOKUP_CACHE_SECONDS", "0"),
            ("FIRMWARE_CACHE_BYTES", "0"),
        ],
    )
    .await
    else {
        return;
    };
    let (one, two) = (
        create_model(&a, CODE, None).await,
        create_model(&a, "other", None).await,
    );
    let (v1, other) = (Build::new("1.0.0", "one"), Build::new("7.0.0", "other"));
    upload_ok(&b, one, CODE, &v1).await;
    upload_ok(&b, two, "other", &other).await;
    let (d1, d2) = (device_of(&a, one).await, device_of(&a, two).await);
    assert_eq!(ota_image(&a, &d1, None).await, (200, v1.bin.clone()));
    assert_eq!(ota_image(&a, &d2, None).await, (200, other.bin.clone()));
    assert_eq!(
        a.iot_firmware_version(&d2.credential).await.1["firmware_version"],
        "7.0.0"
    );

    let v2 = Build::new("2.0.0", "two");
    upload_ok(&b, one, CODE, &v2).await;
    assert_eq!(ota_image(&a, &d1, None).await, (200, v2.bin.clone()));
    assert_eq!(
        ota_image(&a, &d1, Some("bytes=0-99")).await,
        (206, v2.bin[..100].to_vec())
    );
    assert_eq!(
        a.iot_firmware_version(&d1.credential).await.1["firmware_version"],
        "2.0.0"
    );
    assert_eq!(ota_image(&a, &d2, None).await, (200, other.bin.clone()));
    a.stop().await;
    b.stop().await;
}

/// `GET /api/iot/firmware` as `device`, optionally a `Range`: the status and the body.
async fn ota_image(app: &TestApp, device: &TestDevice, range: Option<&str>) -> (u16, Vec<u8>) {
    let headers: Vec<(&str, &str)> = range.map(|r| vec![("range", r)]).unwrap_or_default();
    let response = app.iot_firmware(&device.credential, &headers).await;
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}
