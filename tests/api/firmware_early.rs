//! The image is stored while the bundle is still arriving (`src/firmware/early.rs`, PostgreSQL
//! with S3): what the store holds before the body has ended, and that nothing is left when the
//! body, the store or the ZIP's own structure fails afterwards.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::Operation;

use crate::firmware_support::*;
use crate::fleet::create_model;
use crate::helpers::*;

/// Where the image entry (the first in [`Build::zip`]) ends in the bundle.
fn image_entry_end(zip: &[u8]) -> usize {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let entry = archive.by_name(&format!("{CODE}.bin")).unwrap();
    usize::try_from(entry.data_start().unwrap() + entry.compressed_size()).unwrap()
}

/// Sends `first` at once and the rest of the body only when `rest` says so: `Some(bytes)` to
/// send them and end the body, `None` to break the body off.
fn held_body(first: Vec<u8>) -> (reqwest::Body, tokio::sync::oneshot::Sender<Option<Vec<u8>>>) {
    let (release, rest) = tokio::sync::oneshot::channel::<Option<Vec<u8>>>();
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) })
        .chain(futures::stream::once(async move {
            match rest.await {
                Ok(Some(rest)) => Ok(Bytes::from(rest)),
                _ => Err(std::io::Error::other("the client broke the body off")),
            }
        }));
    (reqwest::Body::wrap_stream(stream), release)
}

async fn image_stored(app: &TestApp, version: &str) -> bool {
    objects_under(app, &format!("firmware/{CODE}/{version}"))
        .await
        .contains(&format!("firmware/{CODE}/{version}/firmware.bin"))
}

/// Waits until the streamed PUT of `version`'s image has sent all but the image's last byte to
/// the store (which it holds back until validation has confirmed the image, see `early.rs`), so
/// the model is locked; fails if it sends more, or nothing in time.
async fn all_but_the_last_byte_streamed(app: &TestApp, version: &str, image: &[u8]) {
    let key = format!("firmware/{CODE}/{version}/firmware.bin");
    let all_but_one = image.len() as u64 - 1;
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.faults.streamed(&key) >= all_but_one
        })
        .await,
        "the image was not streamed while the rest of the body was held back"
    );
    assert_eq!(app.faults.streamed(&key), all_but_one, "not its last byte");
}

#[tokio::test]
async fn the_image_goes_to_the_store_before_the_body_has_ended() {
    let Some(app) = spawn_app(Stack::Production, "firmware_early_stored").await else {
        return;
    };
    let app = &app;
    let model = create_model(app, CODE, None).await;
    let build = Build::new("2.0.0", "early");
    let zip = build.zip(CODE);
    let split = image_entry_end(&zip);
    let puts = app.faults.calls(Operation::Put);
    let (body, release) = held_body(zip[..split].to_vec());
    let upload = app.upload_firmware_as(model, "application/zip", body);
    let hold = async {
        all_but_the_last_byte_streamed(app, "2.0.0", &build.bin).await;
        assert!(!image_stored(app, "2.0.0").await, "not committed yet");
        assert!(stored_versions(app, model).await.is_empty(), "no row yet");
        release.send(Some(zip[split..].to_vec())).unwrap();
    };
    let ((status, response), ()) = tokio::join!(upload, hold);
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        app.faults.calls(Operation::Put) - puts,
        5,
        "one PUT per artifact: the streamed image was kept, not PUT again"
    );
    assert_build_stored(app, CODE, &build).await;
    assert_eq!(current_version(app, model).await.as_deref(), Some("2.0.0"));
}

#[tokio::test]
async fn a_body_broken_off_while_the_image_streams_leaves_nothing() {
    let Some(app) = spawn_app(Stack::Production, "firmware_early_broken_body").await else {
        return;
    };
    let app = &app;
    let model = create_model(app, CODE, None).await;
    let v1 = Build::new("1.0.0", "one");
    upload_ok(app, model, CODE, &v1).await;

    let v2 = Build::new("2.0.0", "two");
    let zip = v2.zip(CODE);
    let split = image_entry_end(&zip);
    let (body, release) = held_body(zip[..split].to_vec());
    let path = format!("/api/device-models/{model}/firmware");
    let upload = app
        .admin_request(reqwest::Method::POST, app.url(&path))
        .header("content-type", "application/zip")
        .body(body)
        .send();
    let hold = async {
        all_but_the_last_byte_streamed(app, "2.0.0", &v2.bin).await;
        release.send(None).unwrap();
    };
    let (sent, ()) = tokio::join!(upload, hold);
    assert!(
        sent.is_err(),
        "the request failed on the client's side: {sent:?}"
    );
    // The PUT is given up one byte short, so the store commits nothing (what it might have
    // stored would be deleted under the model lock, before the transaction ends).
    assert_nothing_stored(app, model, Some("1.0.0"), &["1.0.0"]).await;
    // The lock is given back after that clean-up; then the same version goes through, with the
    // whole image streamed, while the broken-off PUT never sent its last byte.
    assert!(eventually(Duration::from_secs(20), || model_lock_free(app, model)).await);
    upload_ok(app, model, CODE, &v2).await;
    let key = format!("firmware/{CODE}/2.0.0/firmware.bin");
    let image = v2.bin.len() as u64;
    assert_eq!(app.faults.streamed(&key), (image - 1) + image);
    assert_build_stored(app, CODE, &v2).await;
    assert_build_stored(app, CODE, &v1).await;
}

#[tokio::test]
async fn a_store_failing_half_way_through_the_image_is_503_and_leaves_nothing() {
    for_each_stack("firmware_early_store_fails", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        upload_ok(app, model, CODE, &v1).await;
        let v2 = Build::new("2.0.0", "two");
        // The streamed PUT breaks off after its first bytes (on the embedded stack, where
        // images are PUT whole, the PUT fails).
        app.faults.inject(
            Fault::always(Operation::Put)
                .for_keys_containing("2.0.0/firmware.bin")
                .after_bytes(100),
        );
        let (status, body) = upload(app, model, v2.zip(CODE)).await;
        assert_eq!(status, 503, "{body}");
        assert!(objects_under(app, &format!("firmware/{CODE}/2.0.0"))
            .await
            .is_empty());
        assert_nothing_stored(app, model, Some("1.0.0"), &["1.0.0"]).await;
        app.faults.heal();
        upload_ok(app, model, CODE, &v2).await;
        assert_build_stored(app, CODE, &v2).await;
    })
    .await;
}

/// The streamed PUT is one request that cannot be retried (its body is gone): when it fails, the
/// validated image is PUT the ordinary way, with the store client's retries. Also when the store
/// received it whole but its answer was lost, and it commits it late, over the new PUT: it is
/// the same image.
#[tokio::test]
async fn a_streamed_put_that_fails_is_done_again_the_ordinary_way() {
    let Some(app) = spawn_app(Stack::Production, "firmware_early_put_retried").await else {
        return;
    };
    let app = &app;
    let model = create_model(app, CODE, None).await;
    let broken_off = Fault::always(Operation::Put).after_bytes(100);
    let answer_lost = Fault::always(Operation::Put).answer_lost();
    for (version, fault) in [("2.0.0", broken_off), ("3.0.0", answer_lost)] {
        let build = Build::new(version, "two");
        app.faults.inject(
            fault
                .for_keys_containing(format!("{version}/firmware.bin"))
                .times(1),
        );
        let puts = app.faults.calls(Operation::Put);
        let (status, body) = upload(app, model, build.zip(CODE)).await;
        assert_eq!(status, 200, "{version}: {body}");
        assert_eq!(
            app.faults.calls(Operation::Put) - puts,
            6,
            "{version}: five artifacts and the image once more"
        );
        assert_build_stored(app, CODE, &build).await;
        assert_eq!(current_version(app, model).await.as_deref(), Some(version));
    }
}

/// A bundle of `listed` (version 2.0.0) behind a local entry of another image of the same
/// version that its central directory does not name: data before the archive proper, which ZIP
/// readers skip, as in self-extracting archives. The streamed PUT goes to the very key of the
/// real image.
fn hidden_image_before(listed: &Build) -> Vec<u8> {
    let hidden = Build::new(&listed.version, "a hidden other image");
    let hidden_zip = zip_of(&[(format!("{CODE}.bin"), hidden.bin.clone())]);
    let mut body = hidden_zip[..image_entry_end(&hidden_zip)].to_vec();
    body.extend_from_slice(&listed.zip(CODE));
    body
}

/// A ZIP whose first local header holds another image than its central directory names
/// ([`hidden_image_before`]): what is stored is the image the central directory names, never
/// the one streamed from that header.
#[tokio::test]
async fn an_image_the_central_directory_does_not_name_is_never_kept() {
    for_each_stack("firmware_early_disagreeing_zip", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        upload_ok(app, model, CODE, &v1).await;
        let puts = app.faults.calls(Operation::Put);

        let listed = Build::new("2.0.0", "listed");
        let (status, response) = upload(app, model, hidden_image_before(&listed)).await;
        assert_eq!(status, 200, "{response}");
        // Five artifacts; on PostgreSQL with S3 also the hidden image's streamed PUT, which the
        // validated image then replaced (the case this test is for).
        let expected_puts = if app.stack == Stack::Production { 6 } else { 5 };
        assert_eq!(app.faults.calls(Operation::Put), puts + expected_puts);
        assert_build_stored(app, CODE, &listed).await;
        assert_build_stored(app, CODE, &v1).await;
    })
    .await;
}

/// The same, with a store that would commit the streamed PUT late, after the ordinary PUT of the
/// validated image, had it received it whole (its answer lost): the hidden image's last byte is
/// never sent, so it cannot overwrite the real one.
#[tokio::test]
async fn an_image_the_central_directory_does_not_name_is_not_stored_even_late() {
    let Some(app) = spawn_app(Stack::Production, "firmware_early_late_commit").await else {
        return;
    };
    let app = &app;
    let model = create_model(app, CODE, None).await;
    app.faults.inject(
        Fault::always(Operation::Put)
            .for_keys_containing("2.0.0/firmware.bin")
            .answer_lost()
            .times(1),
    );
    let listed = Build::new("2.0.0", "listed");
    let (status, response) = upload(app, model, hidden_image_before(&listed)).await;
    assert_eq!(status, 200, "{response}");
    assert_build_stored(app, CODE, &listed).await;
}

/// A version deleted and uploaded again before the outbox has deleted its objects: the upload
/// withdraws the queued deletions before it writes (the outbox invariant), also where it learns
/// what is queued before its version is known (the early path reads it under the model lock).
#[tokio::test]
async fn a_version_uploaded_again_before_its_deletion_ran_withdraws_the_deletion() {
    for_each_stack("firmware_early_queued_deletion", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        let v2 = Build::new("2.0.0", "two");
        upload_ok(app, model, CODE, &v2).await;
        upload_ok(app, model, CODE, &v1).await;
        // The store refuses deletions for now: the deleted version's keys stay queued.
        app.faults.inject(Fault::always(Operation::Delete));
        let (status, body) = app.delete_firmware_version(model, "2.0.0").await;
        assert_eq!(status, 204, "{body}");
        let queued = |pending: Vec<iotsupport::outbox::PendingDeletion>| {
            pending
                .into_iter()
                .filter(|p| p.object_key.starts_with(&format!("firmware/{CODE}/2.0.0/")))
                .count()
        };
        assert_eq!(
            queued(iotsupport::outbox::pending(app.db()).await.unwrap()),
            5
        );

        upload_ok(app, model, CODE, &v2).await;
        assert_eq!(
            queued(iotsupport::outbox::pending(app.db()).await.unwrap()),
            0,
            "the upload withdrew the queued deletions of its keys"
        );
        app.faults.heal();
        iotsupport::outbox::process_due(app.db(), &app.state.storage)
            .await
            .unwrap();
        assert_build_stored(app, CODE, &v2).await;
        assert_build_stored(app, CODE, &v1).await;
    })
    .await;
}

/// Whether no transaction holds the model's lock (the early path takes it at once or not at
/// all).
async fn model_lock_free(app: &TestApp, model: i64) -> bool {
    let iotsupport::db::Db::Postgres(pool) = app.db() else {
        return true;
    };
    let mut tx = pool.begin().await.unwrap();
    let free = sqlx::query("SELECT id FROM device_models WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
        .bind(model)
        .fetch_optional(&mut *tx)
        .await
        .is_ok();
    // Explicitly: a dropped transaction rolls back later, on its own, still holding the lock.
    tx.rollback().await.unwrap();
    free
}

/// An upload that arrives while another change of its model holds the lock does not queue for it
/// while its body arrives (a request broken off meanwhile would hold a connection until the lock
/// is granted: a query cannot be withdrawn by dropping it); it stores the bundle the ordinary
/// way once the body is in and the lock is free.
#[tokio::test]
async fn an_upload_does_not_queue_for_a_busy_model_while_its_body_arrives() {
    let Some(app) = spawn_app(Stack::Production, "firmware_early_busy_model").await else {
        return;
    };
    let app = &app;
    let model = create_model(app, CODE, None).await;
    let mut holder = app.db().begin().await.unwrap();
    iotsupport::db::firmware_versions::lock_model(&mut holder, model)
        .await
        .unwrap();

    let build = Build::new("2.0.0", "two");
    let zip = build.zip(CODE);
    let split = image_entry_end(&zip);
    let (body, release) = held_body(zip[..split].to_vec());
    let puts = app.faults.calls(Operation::Put);
    let upload = app.upload_firmware_as(model, "application/zip", body);
    let hold = async {
        // The image has arrived; nothing waits for the lock, nothing was stored.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(waiting_for_a_lock(app).await, 0, "queued for the lock");
        }
        assert!(objects_under(app, "firmware").await.is_empty());
        release.send(Some(zip[split..].to_vec())).unwrap();
        // Now the upload queues for the lock, and gets it when the other change ends.
        assert!(
            eventually(Duration::from_secs(20), || async {
                waiting_for_a_lock(app).await == 1
            })
            .await
        );
        holder.rollback().await.unwrap();
    };
    let ((status, response), ()) = tokio::join!(upload, hold);
    assert_eq!(status, 200, "{response}");
    assert_eq!(app.faults.calls(Operation::Put) - puts, 5);
    assert_build_stored(app, CODE, &build).await;
}

/// The model lock an upload takes while its body arrives is for firmware changes only: devices of
/// the model can be created meanwhile (their foreign key's share lock does not wait for it), so a
/// slow CI upload does not hold up the fleet.
#[tokio::test]
async fn devices_of_a_model_can_be_created_while_an_upload_of_it_arrives() {
    let Some(app) = spawn_app(Stack::Production, "firmware_early_devices_meanwhile").await else {
        return;
    };
    let app = &app;
    let model = create_model(app, CODE, None).await;
    let build = Build::new("2.0.0", "meanwhile");
    let zip = build.zip(CODE);
    let split = image_entry_end(&zip);
    let (body, release) = held_body(zip[..split].to_vec());
    let upload = app.upload_firmware_as(model, "application/zip", body);
    let meanwhile = async {
        all_but_the_last_byte_streamed(app, "2.0.0", &build.bin).await;
        let created = tokio::time::timeout(Duration::from_secs(5), app.create_device(model, "{}"))
            .await
            .expect("a device was created while the upload held its model's lock");
        assert_eq!(created.0, 201, "{}", created.1);
        release.send(Some(zip[split..].to_vec())).unwrap();
    };
    let ((status, response), ()) = tokio::join!(upload, meanwhile);
    assert_eq!(status, 200, "{response}");
    assert_build_stored(app, CODE, &build).await;
}

/// An image that fails its checks after the early path streamed it is answered with its 400 at once:
/// the upload does not lock the model a second time first (here that lock would wait for a
/// deletion of the model queued behind the upload, and then find no model: a 404 for a bad image).
#[tokio::test]
async fn a_bad_image_streamed_early_gets_its_400_without_locking_again() {
    let Some(app) = spawn_app(Stack::Production, "firmware_early_bad_image").await else {
        return;
    };
    let app = &app;
    let model = create_model(app, CODE, None).await;
    let good = Build::new("2.0.0", "bad");
    let mut entries = good.entries(CODE);
    let at = entries[0].1.len() - 33; // the checksum byte, before the appended SHA-256
    entries[0].1[at] ^= 0xFF;
    let zip = zip_of(&entries);
    let split = image_entry_end(&zip);
    let (body, release) = held_body(zip[..split].to_vec());
    let upload = app.upload_firmware_as(model, "application/zip", body);
    let meanwhile = async {
        all_but_the_last_byte_streamed(app, "2.0.0", &entries[0].1).await;
        // A deletion of the model, queued behind the upload's lock.
        let delete = app.delete_model(model);
        let release_when_queued = async {
            assert!(
                eventually(Duration::from_secs(20), || async {
                    waiting_for_a_lock(app).await == 1
                })
                .await
            );
            release.send(Some(zip[split..].to_vec())).unwrap();
        };
        tokio::join!(delete, release_when_queued).0
    };
    let ((status, response), (deleted, _)) = tokio::join!(upload, meanwhile);
    assert_eq!(status, 400, "{response}");
    assert!(
        response["error"]
            .as_str()
            .is_some_and(|d| d.contains("checksum mismatch")),
        "{response}"
    );
    assert!(
        (200..300).contains(&deleted),
        "the model deletion: {deleted}"
    );
    assert!(objects_under(app, "firmware").await.is_empty());
}
