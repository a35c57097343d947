//! Golden rule 2: rows are deleted and committed first; their objects are deleted afterwards by
//! the outbox worker, which retries until the store cooperates.

use std::time::Duration;

use bytes::Bytes;
use iotsupport::outbox;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::{ObjectKey, Operation};

use crate::helpers::*;

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap()
}

#[tokio::test]
async fn objects_are_deleted_after_their_rows_even_when_s3_was_down_at_delete_time() {
    for_each_stack("outbox_retries", &[], async |app| {
        let keys = [
            key("coredumps/abcd2345/1.dmp"),
            key("coredumps/abcd2345/2.dmp"),
        ];
        for k in &keys {
            app.state
                .storage
                .put(k, Bytes::from_static(b"dump"))
                .await
                .unwrap();
        }

        // S3 is down when the rows are deleted: the delete still commits at once.
        app.faults.inject(Fault::always(Operation::Delete));
        let mut tx = app.db().begin().await.unwrap();
        outbox::schedule_deletion(&mut tx, &keys).await.unwrap();
        tx.commit().await.unwrap();

        // The worker tries, fails, and records the failure for a later retry.
        let failed = eventually(Duration::from_secs(10), || async {
            let pending = outbox::pending(app.db()).await.unwrap();
            pending.len() == 2 && pending.iter().all(|p| p.attempts >= 1)
        })
        .await;
        assert!(failed, "worker did not attempt the deletion");
        let pending = outbox::pending(app.db()).await.unwrap();
        assert!(pending[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("injected fault"));
        assert!(
            pending[0].next_attempt_at > iotsupport::db::now(),
            "backs off"
        );
        for k in &keys {
            assert!(
                app.state.storage.head(k).await.is_ok(),
                "object gone while S3 'down'"
            );
        }

        // S3 comes back; once the backoff has passed the worker finishes the job.
        app.faults.heal();
        make_deletions_due(app).await;
        let done = eventually(Duration::from_secs(10), || async {
            outbox::pending(app.db()).await.unwrap().is_empty()
        })
        .await;
        assert!(done, "outbox not drained");
        for k in &keys {
            assert!(
                app.state.storage.head(k).await.unwrap_err().is_not_found(),
                "{k} left behind"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_deletion_of_thousands_of_keys_schedules_every_key_once() {
    for_each_stack("outbox_many_keys", &[], async |app| {
        // On SQLite more than two statements' worth (`db::BIND_CHUNK` keys each).
        let keys: Vec<ObjectKey> = (0..2345)
            .map(|i| key(&format!("coredumps/abcd2345/{i}.dmp")))
            .collect();
        // The store refuses deletions, so the entries stay for the count.
        app.faults.inject(Fault::always(Operation::Delete));
        let mut tx = app.db().begin().await.unwrap();
        outbox::schedule_deletion(&mut tx, &keys).await.unwrap();
        tx.commit().await.unwrap();

        let mut pending: Vec<String> = outbox::pending(app.db())
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.object_key)
            .collect();
        pending.sort();
        let mut expected: Vec<String> = keys.iter().map(|k| k.as_str().to_string()).collect();
        expected.sort();
        assert_eq!(pending, expected);
    })
    .await;
}

#[tokio::test]
async fn a_batch_that_fails_half_way_retries_only_what_is_left() {
    let Some(app) = spawn_app(Stack::Production, "outbox_half_way").await else {
        return;
    };
    let keys = [
        key("firmware/m/1/firmware.bin"),
        key("firmware/m/1/firmware.elf"),
    ];
    for k in &keys {
        app.state
            .storage
            .put(k, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    app.faults
        .inject(Fault::always(Operation::Delete).for_keys_containing("firmware.elf"));
    let mut tx = app.db().begin().await.unwrap();
    outbox::schedule_deletion(&mut tx, &keys).await.unwrap();
    tx.commit().await.unwrap();

    let settled = eventually(Duration::from_secs(10), || async {
        let pending = outbox::pending(app.db()).await.unwrap();
        pending.len() == 1 && pending[0].attempts >= 1
    })
    .await;
    assert!(settled);
    assert_eq!(
        outbox::pending(app.db()).await.unwrap()[0].object_key,
        keys[1].as_str()
    );
    assert!(app
        .state
        .storage
        .head(&keys[0])
        .await
        .unwrap_err()
        .is_not_found());
    assert!(app.state.storage.head(&keys[1]).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn rewriting_a_key_cancels_its_pending_deletion() {
    for_each_stack("outbox_cancel", &[], async |app| {
        let k = key("firmware/m/1.0.0/firmware.bin");
        app.state
            .storage
            .put(&k, Bytes::from_static(b"old"))
            .await
            .unwrap();
        // Deletion scheduled but not yet carried out (S3 refuses for now).
        app.faults.inject(Fault::always(Operation::Delete));
        let mut tx = app.db().begin().await.unwrap();
        outbox::schedule_deletion(&mut tx, std::slice::from_ref(&k))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        // The same version is uploaded again: cancel first, then write, then commit.
        let mut tx = app.db().begin().await.unwrap();
        assert_eq!(
            outbox::cancel_deletions(&mut tx, std::slice::from_ref(&k))
                .await
                .unwrap(),
            1
        );
        app.state
            .storage
            .put(&k, Bytes::from_static(b"new"))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        app.faults.heal();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pass = outbox::process_due(app.db(), &app.state.storage)
            .await
            .unwrap();
        assert_eq!(pass, outbox::OutboxPass::default());
        let body = app
            .state
            .storage
            .get(&k, None)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.as_ref(), b"new", "re-uploaded object deleted");
    })
    .await;
}
