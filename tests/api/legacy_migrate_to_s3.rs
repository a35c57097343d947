//! `iotsupport migrate-to-s3` (SPEC §10): moving the Python service's `ASSETS_DIR` and
//! `COREDUMPS_DIR` into the bucket once, never touching the source tree; an S3 failure half way
//! leaving nothing half written; revision 008, where the Python service had already moved some
//! versions.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use crate::firmware_support::{sha256_hex, version_json, zip_of, Build};
use crate::helpers::*;
use crate::legacy::*;
use iotsupport::storage::{ObjectKey, ObjectStorage};

#[tokio::test]
async fn migrate_to_s3_moves_the_legacy_tree_once_and_never_touches_it() {
    let Some(legacy) = legacy_database("migrate_to_s3", "005").await else {
        return;
    };
    assert_success(&run(&legacy.env(), &["migrate"]));
    let tree = legacy_tree();
    let before = snapshot(tree._root.path());
    let env = tree_env(&legacy, &tree);
    let mut conn = legacy.conn().await;

    // Either service unreachable: non-zero exit before anything is written.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let output = run(&with(&env, "S3_ENDPOINT_URL", &closed), &["migrate-to-s3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("S3 is not reachable"),
        "{}",
        stderr(&output)
    );
    let dead_db = format!("postgres://nobody:nothing@127.0.0.1:{}/none", free_port());
    let output = run(&with(&env, "DATABASE_URL", &dead_db), &["migrate-to-s3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Cannot connect to database"),
        "{}",
        stderr(&output)
    );
    untouched(&legacy, &mut conn).await;

    // Dry run: says what it would do, writes nothing (not even the bucket).
    let out = assert_success(&run(&env, &["migrate-to-s3", "--dry-run"]));
    for expected in [
        "[DRY RUN] Migration complete.",
        "[DRY RUN] Would migrate firmware: sensor/1.0.0",
        "[DRY RUN] Would migrate firmware: sensor/1.1.0",
        "[DRY RUN] Would migrate coredump: abcdefgh/coredump_20250103T030405_000002Z.dmp -> coredumps/abcdefgh/2.dmp",
        "Firmware ZIPs migrated: 2",
        "Firmware ZIPs skipped:  3",
        "Coredumps migrated:     2",
        "Coredumps skipped:      2",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        out.contains(&format!("Object store: bucket {} at", legacy.bucket)),
        "{out}"
    );
    untouched(&legacy, &mut conn).await;
    // Nor a local store or an SQLite database that do not exist yet: neither is created.
    let scratch = tempfile::tempdir().unwrap();
    let local_dir = scratch.path().join("objects");
    let local: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("S3_"))
        .cloned()
        .chain([("STORAGE_DIR".to_string(), local_dir.display().to_string())])
        .collect();
    let out = assert_success(&run(&local, &["migrate-to-s3", "--dry-run"]));
    assert!(out.contains("Coredumps migrated:     2"), "{out}");
    assert!(!local_dir.exists(), "the dry run created STORAGE_DIR");
    let sqlite_file = scratch.path().join("typo.db");
    let sqlite_url = format!("sqlite://{}", sqlite_file.display());
    let output = run(
        &with(&local, "DATABASE_URL", &sqlite_url),
        &["migrate-to-s3", "--dry-run"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("does not exist"),
        "{}",
        stderr(&output)
    );
    assert!(!sqlite_file.exists(), "the run created the SQLite database");

    // Reconcile before the bucket exists: an error that says so; it does not create the bucket.
    let output = run(&env, &["reconcile", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("does not exist"),
        "{}",
        stderr(&output)
    );
    assert!(
        iotsupport::storage::bucket::ensure_bucket(&legacy.s3_config())
            .await
            .unwrap(),
        "reconcile created the bucket"
    );

    // Rows still naming legacy files are neither dangling nor repaired by reconcile.
    let report: Value = serde_json::from_str(&assert_success(&run(
        &env,
        &["reconcile", "--json", "--repair"],
    )))
    .unwrap();
    assert_eq!(report["report"]["legacy_coredumps"], 3, "{report}");
    assert_eq!(
        report["report"]["dangling_coredumps"],
        json!([]),
        "{report}"
    );
    assert_eq!(report["repair"]["coredumps_marked_error"], 0, "{report}");

    // The real run.
    let output = run(&env, &["migrate-to-s3"]);
    let out = assert_success(&output);
    for expected in [
        "\nMigration complete.",
        "Firmware ZIPs migrated: 2",
        "Firmware ZIPs skipped:  3",
        "Coredumps migrated:     2",
        "Coredumps skipped:      2",
        "Warnings (",
        "Model directory 'ghost' has no matching DB record, skipping",
        "Failed to migrate firmware sensor/2.0.0: Firmware must be uploaded as a ZIP bundle",
        "Orphaned coredump file abcdefgh/coredump_20240101T000000_000000Z.dmp: no matching DB record",
        "Device directory 'zzzzzzzz' has no matching DB record, skipping",
        "1 core dump row(s) still name a legacy file that was not found in COREDUMPS_DIR (e.g. bcdefghi/coredump_20250104T030405_000003Z.dmp)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains("    - Skipping legacy flat binary"),
        "a flat binary is no warning:\n{out}"
    );
    assert!(stderr(&output).contains("Skipping legacy flat binary: firmware-sensor.bin"));
    assert!(
        stderr(&output).contains("migrate_to_s3"),
        "per-item log events"
    );

    // The bucket holds exactly the two bundles and the two matched dumps.
    let objects = legacy.objects().await;
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for build in &tree.builds {
        for (name, content) in build.artifacts() {
            expected.insert(
                format!("firmware/sensor/{}/{name}", build.version),
                content.to_vec(),
            );
        }
    }
    expected.insert("coredumps/abcdefgh/1.dmp".into(), DUMP_PARSED.1.to_vec());
    expected.insert("coredumps/abcdefgh/2.dmp".into(), DUMP_PENDING.1.to_vec());
    let stored: BTreeMap<String, Vec<u8>> = objects
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(stored, expected);

    // Rows: versions with their facts and build times; the current version untouched.
    let versions: Vec<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT version, firmware_bin_sha256, uploaded_at FROM firmware_versions ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(versions.len(), 2);
    for ((version, sha, uploaded_at), (i, build)) in
        versions.iter().zip(tree.builds.iter().enumerate())
    {
        assert_eq!(version, &build.version);
        assert_eq!(sha.as_deref(), Some(sha256_hex(&build.bin).as_str()));
        assert_eq!(
            uploaded_at.timestamp(),
            1_735_689_600 + 86_400 * i as i64,
            "uploaded_at is the bundle file's time"
        );
    }
    let current: Option<String> =
        sqlx::query_scalar("SELECT firmware_version FROM device_models WHERE code = 'sensor'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(current.as_deref(), Some("1.0.0"));
    // Dumps: file names cleared for the moved two, a parse queued for the PENDING one only (the
    // PARSED one keeps the Python service's report); the third still waits for its file.
    let dumps: Vec<(i64, Option<String>, String)> =
        sqlx::query_as("SELECT id, filename, parse_status FROM coredumps ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        dumps,
        [
            (1, None, "PARSED".to_string()),
            (2, None, "PENDING".to_string()),
            (3, Some(DUMP_MISSING.0.to_string()), "ERROR".to_string())
        ]
    );
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM jobs")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(payloads.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&payloads[0]).unwrap()["coredump_id"],
        2
    );
    assert!(
        has_column(&mut conn, "coredumps", "filename").await,
        "kept: row 3 needs it"
    );
    assert_eq!(
        snapshot(tree._root.path()),
        before,
        "source files untouched"
    );

    // A second run changes nothing and says so.
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    for expected in [
        "Firmware ZIPs migrated: 0",
        "Firmware ZIPs already migrated: 2",
        "Coredumps migrated:     0",
        "Coredumps already migrated: 2",
        // The ZIP that is none, the model directory without a model, the orphaned files.
        "Nothing was migrated: 5 item(s) skipped (see the warnings).",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(legacy.objects().await, objects, "no object rewritten");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 1);

    // Objects the rows say were moved but the store lacks (the first run went to another store:
    // a mistyped bucket, the local default) are written again from the source; the dry run says
    // it would.
    use iotsupport::storage::ObjectStorage;
    let store = legacy.storage();
    let lost = [
        "coredumps/abcdefgh/2.dmp",
        "firmware/sensor/1.1.0/firmware.elf",
    ];
    for key in lost {
        let key = iotsupport::storage::ObjectKey::parse(key).unwrap();
        store.delete(&key).await.unwrap();
    }
    // A service on the right store meanwhile parsed dump 2 and found its object missing.
    sqlx::query(
        "UPDATE coredumps SET parse_status = 'ERROR', parsed_output = 'The core dump object is \
         missing from the object store' WHERE id = 2",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("DELETE FROM jobs")
        .execute(&mut conn)
        .await
        .unwrap();
    let out = assert_success(&run(&env, &["migrate-to-s3", "--dry-run"]));
    for expected in [
        "Coredump abcdefgh/coredump_20250103T030405_000002Z.dmp is recorded as migrated but missing from the object store: it would be uploaded again to coredumps/abcdefgh/2.dmp",
        "Firmware sensor/1.1.0 is recorded as migrated but missing from the object store: it would be written again",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(
        legacy.objects().await.len(),
        objects.len() - 2,
        "the dry run wrote"
    );
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    for expected in [
        "Firmware ZIPs migrated: 1",
        "Coredumps migrated:     1",
        "missing from the object store: uploaded again to coredumps/abcdefgh/2.dmp",
        "Firmware sensor/1.1.0 was recorded as migrated but missing from the object store: written again",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let restored: BTreeMap<String, Vec<u8>> = legacy
        .objects()
        .await
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect();
    assert_eq!(restored, stored, "the store holds everything again");
    // And the dump is parsed again.
    let status: String = sqlx::query_scalar("SELECT parse_status FROM coredumps WHERE id = 2")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "PENDING");
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM jobs")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    // Its third parse: the first run queued the second (a legacy PENDING dump is parsed again).
    assert_eq!(payloads, [r#"{"coredump_id":2,"generation":2}"#]);

    // Had that run stopped between writing the object and committing the parse, the dump would
    // still be ERROR from a parse older than its object: the next run parses it again. An error
    // newer than the object stands.
    let fail_parse_at = async |conn: &mut sqlx::PgConnection, at: DateTime<Utc>| {
        sqlx::query(
            "UPDATE coredumps SET parse_status = 'ERROR', parsed_output = 'failed', parsed_at = $1
             WHERE id = 2",
        )
        .bind(at)
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::query("DELETE FROM jobs")
            .execute(&mut *conn)
            .await
            .unwrap();
    };
    fail_parse_at(&mut conn, Utc::now() + chrono::Duration::hours(1)).await;
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(out.contains("Coredumps migrated:     0"), "{out}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 0);
    fail_parse_at(&mut conn, Utc::now() - chrono::Duration::hours(1)).await;
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(
        out.contains("failed to parse before its object was stored: parsing it again"),
        "{out}"
    );
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 1);

    // The missing file turns up: it is moved, its ERROR dump queued for a parse, and with no
    // legacy row left the filename column goes.
    write(
        &tree.coredumps.join("bcdefghi").join(DUMP_MISSING.0),
        DUMP_MISSING.1,
    );
    // While another transaction reads coredumps (a page, a parse), the drop does not wait for
    // it (and hold up everything behind it): the column stays for the next run.
    let mut reader = legacy.conn().await;
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    count(&mut reader, "SELECT count(*) FROM coredumps").await;
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(out.contains("Coredumps migrated:     1"), "{out}");
    assert!(out.contains("(the table was busy)"), "{out}");
    assert!(has_column(&mut conn, "coredumps", "filename").await);
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(
        out.contains("dropped the coredumps.filename column"),
        "{out}"
    );
    assert!(!has_column(&mut conn, "coredumps", "filename").await);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 2);
    // And a run after that still knows every file.
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(out.contains("Coredumps migrated:     0"), "{out}");
    assert!(out.contains("Coredumps already migrated: 3"), "{out}");
    assert!(out.contains("Nothing was migrated"), "{out}");
    assert!(out.contains("Coredump migration already complete"), "{out}");

    // The API serves the migrated data.
    let app = serve(&legacy, "migrate_to_s3", &[("IOT_DEVICE_KEY_AUTH", "true")]).await;
    let firmware = app.get("/api/iot/firmware?device_key=abcdefgh").await;
    assert_eq!(firmware.status(), 200);
    assert_eq!(
        firmware.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", sha256_hex(&tree.builds[0].bin))
    );
    assert_eq!(
        firmware.bytes().await.unwrap().as_ref(),
        tree.builds[0].bin.as_slice()
    );
    let dump = app.get("/api/devices/1/coredumps/2/download").await;
    assert_eq!(dump.status(), 200);
    assert_eq!(dump.bytes().await.unwrap().as_ref(), DUMP_PENDING.1);
    let (status, versions) = app.firmware_versions(1).await;
    assert_eq!(status, 200, "{versions}");
    app.stop().await;
}

/// A legacy database at `revision`, adopted, its bucket created, and what it takes to run
/// `migrate-to-s3` in-process over the legacy tree through a fault-injecting store.
struct InProcessMigration {
    legacy: Legacy,
    _tree: LegacyTree,
    faulty: iotsupport::storage::faulty::FaultyStorage,
    storage: iotsupport::storage::Storage,
    db: iotsupport::db::Db,
    options: iotsupport::migrate_to_s3::Options,
}

impl InProcessMigration {
    async fn start(test: &str, revision: &str, concurrency: usize) -> Option<Self> {
        let legacy = legacy_database(test, revision).await?;
        assert_success(&run(&legacy.env(), &["migrate"]));
        iotsupport::storage::bucket::ensure_bucket(&legacy.s3_config())
            .await
            .unwrap();
        let tree = legacy_tree();
        let faulty =
            iotsupport::storage::faulty::FaultyStorage::new(std::sync::Arc::new(legacy.storage()));
        let storage: iotsupport::storage::Storage = std::sync::Arc::new(faulty.clone());
        let db = iotsupport::db::Db::Postgres(sqlx::PgPool::connect(&legacy.db_url).await.unwrap());
        let options = iotsupport::migrate_to_s3::Options {
            assets_dir: Some(tree.assets.clone()),
            coredumps_dir: Some(tree.coredumps.clone()),
            dry_run: false,
            max_entry_bytes: 10 * 1024 * 1024,
            concurrency,
        };
        Some(InProcessMigration {
            legacy,
            _tree: tree,
            faulty,
            storage,
            db,
            options,
        })
    }
}

#[tokio::test]
async fn migrate_to_s3_stopped_by_s3_half_way_leaves_nothing_half_written_and_a_rerun_finishes() {
    use iotsupport::migrate_to_s3;
    use iotsupport::storage::faulty::Fault;
    use iotsupport::storage::Operation;

    let Some(InProcessMigration {
        legacy,
        _tree,
        faulty,
        storage,
        db,
        options,
    }) = InProcessMigration::start("migrate_to_s3_faults", "005", 4).await
    else {
        return;
    };
    let mut conn = legacy.conn().await;

    // S3 refuses one artifact of the second bundle: the run stops; 1.0.0 is complete, 1.1.0 has
    // neither a row nor any of its objects, and no core dump was touched.
    faulty.inject(Fault::always(Operation::Put).for_keys_containing("1.1.0/firmware.map"));
    let error = migrate_to_s3::run(&db, &storage, &options)
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("Migration failed"), "{error}");
    // What it did until then is told, not lost with the error.
    assert_eq!(error.summary.firmware_migrated, 1);
    let told = error.summary.render_stopped(false);
    assert!(
        told.contains("Migration stopped before the end. Until then:")
            && told.contains("Firmware ZIPs migrated: 1"),
        "{told}"
    );
    let versions: Vec<String> = sqlx::query_scalar("SELECT version FROM firmware_versions")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, ["1.0.0"]);
    let keys: Vec<String> = legacy.objects().await.into_keys().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("firmware/sensor/1.0.0/")),
        "{keys:?}"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM coredumps WHERE filename IS NOT NULL"
        )
        .await,
        3
    );

    // Next, S3 refuses one dump: that row keeps its file name and gets no job; the others go on.
    faulty.heal();
    faulty.inject(Fault::always(Operation::Put).for_keys_containing("abcdefgh/2.dmp"));
    migrate_to_s3::run(&db, &storage, &options)
        .await
        .unwrap_err();
    let pending: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM coredumps WHERE filename IS NOT NULL ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(pending, [2, 3]);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 0);
    assert!(!legacy
        .objects()
        .await
        .contains_key("coredumps/abcdefgh/2.dmp"));
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM firmware_versions").await,
        2
    );

    // S3 healthy again: the rerun finishes the job and repeats nothing.
    faulty.heal();
    let summary = migrate_to_s3::run(&db, &storage, &options).await.unwrap();
    assert_eq!(summary.firmware_migrated, 0);
    assert_eq!(summary.firmware_unchanged, 2);
    assert_eq!(summary.coredumps_migrated, 1);
    assert_eq!(summary.coredumps_unchanged, 1);
    assert_eq!(
        legacy.objects().await["coredumps/abcdefgh/2.dmp"].0,
        DUMP_PENDING.1
    );
    assert_eq!(count(&mut conn, "SELECT count(*) FROM jobs").await, 1);
}

/// A revision-008 database adopted by `migrate`, and a legacy tree whose ASSETS_DIR holds the
/// bundle of 0.9.0 (returned), which the Python service had already moved to the bucket itself.
async fn adopted_008_with_its_0_9_0_zip(test: &str) -> Option<(Legacy, LegacyTree, Build)> {
    let legacy = legacy_database(test, "008").await?;
    assert_success(&run(&legacy.env(), &["migrate"]));
    let tree = legacy_tree();
    let old = Build::new("0.9.0", "o");
    write(
        &tree.assets.join("sensor/firmware-0.9.0.zip"),
        &old.zip("sensor"),
    );
    Some((legacy, tree, old))
}

#[tokio::test]
async fn migrate_to_s3_on_revision_008_fills_in_versions_the_python_service_already_moved() {
    // The Python service's own migrate-to-s3 uploaded 0.9.0 (no hashes in its row); its bundle
    // is still in ASSETS_DIR, next to a newer one.
    let Some((legacy, tree, old)) = adopted_008_with_its_0_9_0_zip("migrate_to_s3_008").await
    else {
        return;
    };
    let out = assert_success(&run(&tree_env(&legacy, &tree), &["migrate-to-s3"]));
    assert!(out.contains("Firmware ZIPs migrated: 3"), "{out}");
    assert!(
        out.contains("No legacy core dumps in the database"),
        "COREDUMPS_DIR is left alone at 008: {out}"
    );
    assert!(out.contains("Coredumps migrated:     0"), "{out}");

    let mut conn = legacy.conn().await;
    let (sha, uploaded_at): (Option<String>, DateTime<Utc>) = sqlx::query_as(
        "SELECT firmware_bin_sha256, uploaded_at FROM firmware_versions WHERE version = '0.9.0'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(sha.as_deref(), Some(sha256_hex(&old.bin).as_str()));
    assert_eq!(
        uploaded_at,
        Utc.with_ymd_and_hms(2024, 12, 1, 0, 0, 0).unwrap(),
        "a filled-in row keeps its place in the retention order"
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM firmware_versions").await,
        3
    );
    let objects = legacy.objects().await;
    for (name, content) in old.artifacts() {
        assert_eq!(objects[&format!("firmware/sensor/0.9.0/{name}")].0, content);
    }
    let again = assert_success(&run(&tree_env(&legacy, &tree), &["migrate-to-s3"]));
    assert!(
        again.contains("Firmware ZIPs already migrated: 3"),
        "{again}"
    );
}

#[tokio::test]
async fn migrate_to_s3_keeps_a_newer_build_the_python_service_stored_under_the_same_version() {
    // The ZIP on disk is 0.9.0 as first uploaded; the Python service has since stored another
    // build under 0.9.0 in the bucket (a re-upload overwrote the objects, not the ZIP).
    let Some((legacy, tree, _)) = adopted_008_with_its_0_9_0_zip("migrate_to_s3_newer").await
    else {
        return;
    };
    let newer = Build::new("0.9.0", "n");
    iotsupport::storage::bucket::ensure_bucket(&legacy.s3_config())
        .await
        .unwrap();
    let store = legacy.storage();
    for (name, content) in newer.artifacts() {
        let key = ObjectKey::parse(format!("firmware/sensor/0.9.0/{name}")).unwrap();
        store
            .put(&key, bytes::Bytes::copy_from_slice(content))
            .await
            .unwrap();
    }

    let out = run(&tree_env(&legacy, &tree), &["migrate-to-s3"]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("sensor/0.9.0") && printed.contains("the stored build was kept"),
        "{printed}"
    );
    let objects = legacy.objects().await;
    for (name, content) in newer.artifacts() {
        assert_eq!(
            objects[&format!("firmware/sensor/0.9.0/{name}")].0,
            content,
            "{name} was replaced by the older ZIP's"
        );
    }
    let mut conn = legacy.conn().await;
    let sha: Option<String> = sqlx::query_scalar(
        "SELECT firmware_bin_sha256 FROM firmware_versions WHERE version = '0.9.0'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(sha, None, "the older ZIP's facts were recorded");
}

#[tokio::test]
async fn migrate_to_s3_starts_no_further_dump_once_s3_has_failed() {
    use iotsupport::migrate_to_s3;
    use iotsupport::storage::faulty::Fault;
    use iotsupport::storage::Operation;

    // One dump at a time: the first one's upload fails; the second is never started (it used to
    // be, and every further one, each waiting out the S3 timeout when S3 is gone).
    let Some(InProcessMigration {
        legacy,
        _tree,
        faulty,
        storage,
        db,
        options,
    }) = InProcessMigration::start("migrate_to_s3_stop_early", "005", 1).await
    else {
        return;
    };
    faulty.inject(Fault::always(Operation::Put).for_keys_containing("abcdefgh/1.dmp"));
    migrate_to_s3::run(&db, &storage, &options)
        .await
        .unwrap_err();
    let mut conn = legacy.conn().await;
    let pending: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM coredumps WHERE filename IS NOT NULL ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(pending, [1, 2, 3], "a dump was started after the failure");
    assert!(!legacy
        .objects()
        .await
        .contains_key("coredumps/abcdefgh/2.dmp"));
}

/// What the Python service kept that our uploads would refuse or never make, and reruns:
/// - a bundle whose `.elf` is not its image's and whose `version.json` says `v1.2.0` is stored
///   with a warning (the checks SPEC §7 adds beyond the Python service only report here: the ZIP
///   is the only copy of that build);
/// - a dump file two legacy rows name (no unique constraint there) goes to both, in one run;
/// - a version deleted or pruned after the first run is not brought back by a rerun.
#[tokio::test]
async fn migrate_to_s3_keeps_what_the_python_service_kept_and_a_rerun_brings_nothing_back() {
    let Some(legacy) = legacy_database("migrate_to_s3_reruns", "005").await else {
        return;
    };
    let mut conn = legacy.conn().await;
    sqlx::query(
        "INSERT INTO coredumps (device_id, filename, chip, firmware_version, size, parse_status,
                                parsed_output, uploaded_at)
         SELECT device_id, filename, chip, firmware_version, size, parse_status, parsed_output,
                uploaded_at
         FROM coredumps WHERE filename = $1",
    )
    .bind(DUMP_PENDING.0)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_success(&run(&legacy.env(), &["migrate"]));
    let tree = legacy_tree();
    let incoherent = Build::new("1.2.0", "c");
    let entries: Vec<(String, Vec<u8>)> = incoherent
        .entries("sensor")
        .into_iter()
        .map(|(name, data)| match name.as_str() {
            "sensor.elf" => (name, b"\x7fELF another build's ELF".to_vec()),
            "version.json" => (name, version_json("v1.2.0")),
            _ => (name, data),
        })
        .collect();
    write(
        &tree.assets.join("sensor/firmware-1.2.0.zip"),
        &zip_of(&entries),
    );
    let env = tree_env(&legacy, &tree);

    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    for expected in [
        "Firmware ZIPs migrated: 3",
        "Coredumps migrated:     3",
        "Firmware sensor/1.2.0: sensor.elf does not belong to sensor.bin",
        "Firmware sensor/1.2.0: version.json firmware_version \"v1.2.0\" does not match the image version \"1.2.0\"; migrated as the Python service kept it",
        "Coredump abcdefgh/coredump_20250103T030405_000002Z.dmp: 2 rows of the Python service's database named this file; each got its own copy",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let versions = async |conn: &mut sqlx::PgConnection| -> Vec<String> {
        sqlx::query_scalar("SELECT version FROM firmware_versions ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .unwrap()
    };
    assert_eq!(versions(&mut conn).await, ["1.0.0", "1.1.0", "1.2.0"]);
    let objects = legacy.objects().await;
    assert_eq!(
        objects["firmware/sensor/1.2.0/firmware.elf"].0,
        b"\x7fELF another build's ELF"
    );
    let twins: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, filename FROM coredumps WHERE device_id = 1 AND id <> 1 ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(twins.len(), 2, "{twins:?}");
    for (id, filename) in &twins {
        assert_eq!(filename, &None, "dump {id} still names its file");
        assert_eq!(
            objects[&format!("coredumps/abcdefgh/{id}.dmp")].0,
            DUMP_PENDING.1,
            "dump {id}"
        );
    }

    // Retention (or an admin) removes 1.1.0 after the run: neither a dry run nor a rerun brings
    // it back.
    sqlx::query("DELETE FROM firmware_versions WHERE version = '1.1.0'")
        .execute(&mut conn)
        .await
        .unwrap();
    let deleted =
        "Firmware sensor/1.1.0 was migrated before and deleted or pruned since; not brought back";
    let out = assert_success(&run(&env, &["migrate-to-s3", "--dry-run"]));
    assert!(out.contains(deleted), "{out}");
    assert!(
        !out.contains("Would migrate firmware: sensor/1.1.0"),
        "{out}"
    );
    let out = assert_success(&run(&env, &["migrate-to-s3"]));
    assert!(out.contains(deleted), "{out}");
    assert!(out.contains("Firmware ZIPs migrated: 0"), "{out}");
    assert!(out.contains("Coredumps migrated:     0"), "{out}");
    assert_eq!(versions(&mut conn).await, ["1.0.0", "1.2.0"]);
}
