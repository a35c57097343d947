//! Uploads store artifacts while the bundle is still being validated (`src/firmware/upload.rs`):
//! whatever fails after the first PUT started — a later check, any one of the parallel PUTs —
//! leaves nothing in the bucket or the database, and bodies too large for the in-memory spool
//! take the temporary-file path with the same result.

use iotsupport::storage::faulty::Fault;
use iotsupport::storage::Operation;

use crate::firmware_support::*;
use crate::fleet::create_model;
use crate::helpers::*;

#[tokio::test]
async fn a_check_failing_after_the_image_was_put_deletes_it_and_stores_nothing() {
    for_each_stack("firmware_stream_late_check", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        upload_ok(app, model, CODE, &v1).await;

        // The image is known good (and its PUT starts) before the ELF is read; this ELF is not
        // the one the image was built from.
        let mut v2 = Build::new("2.0.0", "two");
        v2.elf = b"\x7fELF another build".to_vec();
        let (puts, deletes) = (
            app.faults.calls(Operation::Put),
            app.faults.calls(Operation::Delete),
        );
        let (status, body) = upload(app, model, v2.zip(CODE)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("tempsensor.elf does not belong to tempsensor.bin"),
            "{body}"
        );
        assert!(
            app.faults.calls(Operation::Put) > puts,
            "the image's PUT started before the ELF check"
        );
        assert!(
            app.faults.calls(Operation::Delete) > deletes,
            "what was put is deleted"
        );
        assert!(objects_under(app, &format!("firmware/{CODE}/2.0.0"))
            .await
            .is_empty());
        assert_nothing_stored(app, model, Some("1.0.0"), &["1.0.0"]).await;
        assert_build_stored(app, CODE, &v1).await;
    })
    .await;
}

#[tokio::test]
async fn any_one_of_the_parallel_puts_failing_is_503_and_leaves_nothing() {
    for_each_stack("firmware_stream_put_fails", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        upload_ok(app, model, CODE, &v1).await;

        let v2 = Build::new("2.0.0", "two");
        for (name, _) in v2.artifacts() {
            // Failing for good: an image streamed while the bundle arrived is PUT once more the
            // ordinary way when its streamed PUT fails (tests/api/firmware_early.rs).
            app.faults
                .inject(Fault::always(Operation::Put).for_keys_containing(format!("2.0.0/{name}")));
            let (status, body) = upload(app, model, v2.zip(CODE)).await;
            app.faults.heal();
            assert_eq!(status, 503, "{name}: {body}");
            assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{name}");
            assert!(
                objects_under(app, &format!("firmware/{CODE}/2.0.0"))
                    .await
                    .is_empty(),
                "{name}: objects left behind"
            );
            assert_nothing_stored(app, model, Some("1.0.0"), &["1.0.0"]).await;
        }

        // The same bundle goes through once the store works.
        upload_ok(app, model, CODE, &v2).await;
        assert_build_stored(app, CODE, &v2).await;
        assert_build_stored(app, CODE, &v1).await;
    })
    .await;
}

#[tokio::test]
async fn a_cleanup_that_fails_too_leaves_an_orphan_object_but_no_row() {
    for_each_stack("firmware_stream_cleanup_fails", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let v1 = Build::new("1.0.0", "one");
        app.faults
            .inject(Fault::always(Operation::Put).for_keys_containing("1.0.0/firmware.elf"));
        app.faults.inject(Fault::always(Operation::Delete));
        let (status, body) = upload(app, model, v1.zip(CODE)).await;
        assert_eq!(status, 503, "{body}");
        app.faults.heal();
        // No row: the database never names an object that may be missing. What the failed
        // cleanup left is an orphan for `reconcile` (SPEC §4), and a retry overwrites it.
        assert_eq!(current_version(app, model).await, None);
        assert!(stored_versions(app, model).await.is_empty());
        upload_ok(app, model, CODE, &v1).await;
        assert_build_stored(app, CODE, &v1).await;
    })
    .await;
}

#[tokio::test]
async fn a_body_larger_than_the_memory_spool_is_stored_the_same_way() {
    for_each_stack("firmware_stream_file_spool", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let mut build = Build::new("3.0.0", "big");
        // Incompressible and over the 8 MiB in-memory limits of both the body and an entry, so
        // the body is spooled to a file and the map is streamed from one.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        build.map = (0..9 * 1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let zip = build.zip(CODE);
        assert!(zip.len() > 8 * 1024 * 1024);
        let (status, body) = upload(app, model, zip).await;
        assert_eq!(status, 200, "{body}");
        assert_build_stored(app, CODE, &build).await;
        assert_eq!(current_version(app, model).await.as_deref(), Some("3.0.0"));
    })
    .await;
}
