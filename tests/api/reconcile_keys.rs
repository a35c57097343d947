//! Versions with every kind of character, kept verbatim in keys, and a `reconcile --repair` that
//! never loses data (hardening issue, item 5): it maps every key back before acting, moves objects
//! an earlier release stored under percent-encoded keys, re-checks a stale scan, and is idempotent.

use std::time::Duration;

use futures::stream::BoxStream;
use iotsupport::layout::{self, Artifact};
use iotsupport::reconcile::{self, RepairSummary};
use iotsupport::storage::{ObjectInfo, ObjectKey, StorageError};

use crate::firmware_support::*;
use crate::fleet::create_model;
use crate::helpers::*;

/// One version per character class a version may hold.
const VERSIONS: [&str; 10] = [
    "1.0.0-rc.1+build.5", // SemVer pre-release and build metadata
    "2.1~rc1",            // Debian-style tilde
    "v1 [qa]",            // space and brackets
    "a{b}^c",             // braces, caret
    "x|y\"z",             // pipe, double quote
    "h#1",                // hash
    "q?*",                // question mark, star
    "`t`<u>",             // backtick, angle brackets
    "é1",                 // non-ASCII
    "v5.0-beta1-427-g4532e6e0b2-dirt",
];

async fn repair_and_drain(
    app: &TestApp,
    grace: Duration,
) -> (reconcile::ReconcileReport, RepairSummary) {
    let storage = app.state.storage.clone();
    let report = reconcile::scan(app.db(), &storage, grace).await.unwrap();
    let summary = reconcile::repair(app.db(), &storage, &report, false)
        .await
        .unwrap();
    while iotsupport::outbox::process_due(app.db(), &storage)
        .await
        .unwrap()
        .deleted
        > 0
    {}
    (report, summary)
}

async fn download(
    app: &TestApp,
    model_id: i64,
    version: &str,
    artifact: Artifact,
) -> (u16, Vec<u8>) {
    let response = app
        .download_firmware_artifact(model_id, version, artifact.file_name(), &[])
        .await;
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn clean(report: &reconcile::ReconcileReport) -> bool {
    report.orphans.is_empty()
        && report.dangling_firmware.is_empty()
        && report.dangling_coredumps.is_empty()
        && report.misplaced.is_empty()
        && report.unrecognised.is_empty()
        && report.unsupported_versions.is_empty()
}

#[tokio::test]
async fn every_version_character_class_is_stored_verbatim_served_and_left_alone_by_repair() {
    TestApp::builder("version_chars")
        .env("MAX_FIRMWARES", "20")
        .for_each_stack(async |app| {
            let model_id = create_model(app, "chars", None).await;
            let builds: Vec<Build> = VERSIONS.iter().map(|v| Build::new(v, "salt")).collect();
            for build in &builds {
                upload_ok(app, model_id, "chars", build).await;
            }
            for build in &builds {
                assert_build_stored(app, "chars", build).await;
                for (artifact, (_, bytes)) in Artifact::ALL.into_iter().zip(build.artifacts()) {
                    let (status, body) = download(app, model_id, &build.version, artifact).await;
                    assert_eq!(status, 200, "{} {artifact:?}", build.version);
                    assert_eq!(body, bytes, "{} {artifact:?}", build.version);
                }
            }

            // Every key maps back; nothing is orphaned, dangling or misplaced, and repair (twice)
            // changes nothing, with no grace period at all.
            for _ in 0..2 {
                let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
                assert!(clean(&report), "{report:#?}");
                assert_eq!(report.objects_scanned, 5 * VERSIONS.len());
                assert_eq!(summary, RepairSummary::default());
            }
            assert_eq!(stored_versions(app, model_id).await.len(), VERSIONS.len());
            for build in &builds {
                assert_build_stored(app, "chars", build).await;
            }
        })
        .await;
}

#[tokio::test]
async fn a_percent_in_a_version_is_refused_with_400() {
    let Some(app) = spawn_app(Stack::Embedded, "version_percent").await else {
        return;
    };
    let model_id = create_model(&app, "pct", None).await;
    let (status, body) = upload(&app, model_id, Build::new("100%", "s").zip("pct")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("must not contain '/', '\\' or '%'"),
        "{body}"
    );
    assert!(objects_under(&app, "firmware").await.is_empty());
    app.stop().await;
}

/// Moves a stored version's objects to where a release that percent-encoded keys put them.
async fn store_the_old_way(app: &TestApp, code: &str, version: &str) -> Vec<String> {
    let encoded = layout::legacy_encoded_version(version).expect("a character that was encoded");
    let mut old = Vec::new();
    for artifact in Artifact::ALL {
        let from = layout::firmware_key(code, version, artifact).unwrap();
        let to = layout::firmware_key(code, &encoded, artifact).unwrap();
        app.state.storage.copy(&from, &to).await.unwrap();
        app.state.storage.delete(&from).await.unwrap();
        old.push(to.to_string());
    }
    old
}

#[tokio::test]
async fn objects_under_an_earlier_releases_percent_encoded_key_are_moved_not_lost() {
    for_each_stack("legacy_encoded", &[], async |app| {
        let model_id = create_model(app, "tilde", None).await;
        let old = Build::new("2.1~rc1", "old");
        let current = Build::new("2.2", "new");
        upload_ok(app, model_id, "tilde", &old).await;
        upload_ok(app, model_id, "tilde", &current).await;
        let encoded_keys = store_the_old_way(app, "tilde", "2.1~rc1").await;

        // The scan calls them misplaced: not orphans, and the version is not dangling.
        let report = reconcile::scan(app.db(), &app.state.storage, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(report.misplaced.len(), 5, "{report:#?}");
        assert!(report.orphans.is_empty(), "{report:#?}");
        assert!(report.dangling_firmware.is_empty(), "{report:#?}");

        // The one-off job moves them (as after an upgrade), and a second run finds nothing.
        let moved = reconcile::rekey_legacy_encoded(app.db(), &app.state.storage)
            .await
            .unwrap();
        assert_eq!(moved, 5);
        while iotsupport::outbox::process_due(app.db(), &app.state.storage)
            .await
            .unwrap()
            .deleted
            > 0
        {}
        assert_eq!(
            reconcile::rekey_legacy_encoded(app.db(), &app.state.storage)
                .await
                .unwrap(),
            0
        );
        assert_build_stored(app, "tilde", &old).await;
        for key in &encoded_keys {
            let gone = app
                .state
                .storage
                .head(&ObjectKey::parse(key.clone()).unwrap())
                .await
                .is_err_and(|e| e.is_not_found());
            assert!(gone, "{key} left behind");
        }
        let (status, body) = download(app, model_id, "2.1~rc1", Artifact::Elf).await;
        assert_eq!((status, body), (200, old.elf.clone()));
        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        assert!(clean(&report), "{report:#?}");
        assert_eq!(summary, RepairSummary::default());

        // Repair moves them too, when the job has not run.
        store_the_old_way(app, "tilde", "2.1~rc1").await;
        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        assert_eq!(report.misplaced.len(), 5);
        assert_eq!(summary.misplaced_moved, 5);
        assert_eq!(
            summary.firmware_versions_removed, 0,
            "a valid version was removed"
        );
        assert_build_stored(app, "tilde", &old).await;
        let (report, _) = repair_and_drain(app, Duration::ZERO).await;
        assert!(clean(&report), "{report:#?}");
        assert_eq!(stored_versions(app, model_id).await.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn keys_that_do_not_map_back_are_reported_and_never_touched() {
    for_each_stack("unmapped_keys", &[], async |app| {
        let strange = [
            "firmware/m/50%25/firmware.bin",
            "firmware/m/1.0/firmware.zip",
            "firmware/Not-A-Code/1.0/firmware.bin",
            "coredumps/abcd2345/notes.txt",
        ];
        for key in strange {
            app.state
                .storage
                .put(
                    &ObjectKey::parse(key).unwrap(),
                    bytes::Bytes::from_static(b"x"),
                )
                .await
                .unwrap();
        }
        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        let mut expected: Vec<String> = strange.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(report.unrecognised, expected);
        assert!(report.orphans.is_empty());
        assert_eq!(summary, RepairSummary::default());
        for key in strange {
            assert!(
                app.state
                    .storage
                    .head(&ObjectKey::parse(key).unwrap())
                    .await
                    .is_ok(),
                "{key} was touched"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_repair_from_a_stale_scan_never_deletes_what_a_row_claims_since() {
    for_each_stack("stale_scan", &[], async |app| {
        let model_id = create_model(app, "stale", None).await;
        // A version the database names, so that the store does not look like another
        // database's (repair would refuse: `ReconcileReport::wrong_store`).
        upload_ok(app, model_id, "stale", &Build::new("2.0", "earlier")).await;
        // Objects of 3.0 with no row: orphans at the time of the scan.
        let build = Build::new("3.0", "late");
        for (artifact, (_, bytes)) in Artifact::ALL.into_iter().zip(build.artifacts()) {
            let key = layout::firmware_key("stale", "3.0", artifact).unwrap();
            app.state
                .storage
                .put(&key, bytes::Bytes::copy_from_slice(bytes))
                .await
                .unwrap();
        }
        let stale = reconcile::scan(app.db(), &app.state.storage, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(stale.orphans.len(), 5);
        // Then the pipeline uploads 3.0, and the operator repairs with the old report.
        upload_ok(app, model_id, "stale", &build).await;
        let summary = reconcile::repair(app.db(), &app.state.storage, &stale, false)
            .await
            .unwrap();
        assert_eq!(summary.orphans_queued, 0, "{summary:?}");
        assert_eq!(summary.orphans_claimed_since, 5);
        while iotsupport::outbox::process_due(app.db(), &app.state.storage)
            .await
            .unwrap()
            .deleted
            > 0
        {}
        assert_build_stored(app, "stale", &build).await;
    })
    .await;
}

/// The rotation counters (migration 16) are derived from the devices; if they were ever bypassed
/// (triggers disabled by hand, a partial restore), a scan reports each counter that is off and
/// repair recounts them, after which the status is right again and a second scan is clean.
#[tokio::test]
async fn reconcile_reports_rotation_counters_that_drifted_and_repair_recounts_them() {
    for_each_stack("reconcile_counts", &[], async |app| {
        let model = create_model(app, "counted", None).await;
        for _ in 0..3 {
            crate::fleet::device_of(app, model).await;
        }
        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        assert!(report.rotation_count_drift.is_empty(), "{report:?}");
        assert!(!summary.rotation_counts_recounted);

        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE device_rotation_counts SET devices = devices + 5
             WHERE active AND rotation_state = 'OK'"
        )
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let (_, status) = call(app, http::Method::GET, "/api/rotation/status", None).await;
        assert_eq!(
            status["counts_by_state"]["OK"], 8,
            "the drift is visible: {status}"
        );

        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        assert_eq!(
            report
                .rotation_count_drift
                .iter()
                .map(|d| (d.active, d.rotation_state.as_str(), d.kept, d.counted))
                .collect::<Vec<_>>(),
            vec![(true, "OK", 8, 3)]
        );
        assert!(summary.rotation_counts_recounted);
        let (_, status) = call(app, http::Method::GET, "/api/rotation/status", None).await;
        assert_eq!(status["counts_by_state"]["OK"], 3, "{status}");
        let (again, _) = repair_and_drain(app, Duration::ZERO).await;
        assert!(again.rotation_count_drift.is_empty(), "{again:?}");
    })
    .await;
}

/// Each device's dump count (migration 24, what retention goes by) is derived from its dumps
/// too: a scan reports every device whose count is off, either way, and repair recounts them.
#[tokio::test]
async fn reconcile_reports_dump_counts_that_drifted_and_repair_recounts_them() {
    for_each_stack("reconcile_dump_counts", &[], async |app| {
        let a = crate::fleet::model_with_device(app, "counted").await;
        let b = crate::fleet::device_of(app, a.model_id).await;
        for n in 0..2 {
            crate::coredumps::upload_ok(app, &a, "1.0", format!("{n}").as_bytes()).await;
        }
        crate::coredumps::upload_ok(app, &b, "1.0", b"b").await;
        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        assert!(report.coredump_count_drift.is_empty(), "{report:?}");
        assert_eq!(summary.coredump_counts_recounted, 0);

        for (device, sql) in [
            (
                a.id,
                "UPDATE devices SET coredump_count = coredump_count + 5 WHERE id = $1",
            ),
            (b.id, "UPDATE devices SET coredump_count = 0 WHERE id = $1"),
        ] {
            iotsupport::on_pool!(app.db(), |p| sqlx::query(sql)
                .bind(device)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
            .unwrap();
        }
        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        let mut drift: Vec<_> = report
            .coredump_count_drift
            .iter()
            .map(|d| (d.device_key.as_str(), d.kept, d.counted))
            .collect();
        drift.sort();
        let mut expected = vec![(a.key.as_str(), 7, 2), (b.key.as_str(), 0, 1)];
        expected.sort();
        assert_eq!(drift, expected);
        assert_eq!(summary.coredump_counts_recounted, 2);
        crate::coredumps::assert_dump_counts_kept(app).await;
        let (again, summary) = repair_and_drain(app, Duration::ZERO).await;
        assert!(again.coredump_count_drift.is_empty(), "{again:?}");
        assert_eq!(summary.coredump_counts_recounted, 0);
    })
    .await;
}

/// An orphan `coredumps/A/N.dmp` while dump N belongs to device B (SQLite hands a rolled-back id
/// out again): the scan calls it an orphan, and repair deletes it instead of counting it
/// "claimed" on every run for good; B's own object stays.
#[tokio::test]
async fn a_dump_object_under_another_devices_key_is_an_orphan_repair_deletes() {
    for_each_stack("orphan_of_a_reused_id", &[], async |app| {
        let model_id = create_model(app, "reused", None).await;
        let a = crate::fleet::device_of(app, model_id).await;
        let b = crate::fleet::device_of(app, model_id).await;
        let id = crate::coredumps::upload_ok(app, &b, "1.0", b"b's dump").await;
        let stray = layout::coredump_key(&a.key, id).unwrap();
        app.state
            .storage
            .put(&stray, bytes::Bytes::from_static(b"a's lost dump"))
            .await
            .unwrap();
        let (report, summary) = repair_and_drain(app, Duration::ZERO).await;
        assert_eq!(report.orphans.len(), 1, "{report:#?}");
        assert_eq!(summary.orphans_queued, 1, "{summary:?}");
        assert!(app
            .state
            .storage
            .head(&stray)
            .await
            .is_err_and(|e| e.is_not_found()));
        let own = layout::coredump_key(&b.key, id).unwrap();
        assert!(app.state.storage.head(&own).await.is_ok());
    })
    .await;
}

/// A store whose listing first deletes dump `id` (row and object), as retention and the outbox
/// do: a dump pruned between the scan's reading of the rows and its listing of the objects.
struct PrunedWhileListing {
    inner: iotsupport::storage::Storage,
    db: iotsupport::db::Db,
    id: i64,
    key: ObjectKey,
}

#[async_trait::async_trait]
impl iotsupport::storage::ObjectStorage for PrunedWhileListing {
    async fn put(&self, key: &ObjectKey, body: bytes::Bytes) -> Result<(), StorageError> {
        self.inner.put(key, body).await
    }
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: BoxStream<'static, std::io::Result<bytes::Bytes>>,
    ) -> Result<u64, StorageError> {
        self.inner.put_stream(key, body).await
    }
    async fn put_sized(
        &self,
        key: &ObjectKey,
        len: u64,
        body: BoxStream<'static, std::io::Result<bytes::Bytes>>,
    ) -> Result<(), StorageError> {
        self.inner.put_sized(key, len, body).await
    }
    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<iotsupport::storage::ByteRange>,
    ) -> Result<iotsupport::storage::ObjectRead, StorageError> {
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &ObjectKey) -> Result<ObjectInfo, StorageError> {
        self.inner.head(key).await
    }
    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), StorageError> {
        self.inner.copy(from, to).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<Result<(), StorageError>> {
        self.inner.delete_many(keys).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        if prefix == layout::COREDUMP_PREFIX {
            iotsupport::on_pool!(&self.db, |p| sqlx::query(
                "DELETE FROM coredumps WHERE id = $1"
            )
            .bind(self.id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
            self.inner.delete(&self.key).await?;
        }
        self.inner.list(prefix).await
    }
    async fn check(&self) -> Result<(), StorageError> {
        self.inner.check().await
    }
}

/// A dump pruned while the scan runs (its row read, then row and object gone before the listing)
/// is not reported dangling: the scan reads such rows again before it reports them.
#[tokio::test]
async fn a_dump_pruned_while_the_scan_runs_is_not_reported_dangling() {
    for_each_stack("pruned_while_scanning", &[], async |app| {
        let device = crate::coredumps::model_with_device(app, "pruned").await;
        let id = crate::coredumps::upload_ok(app, &device, "1.0", b"a dump").await;
        let kept = crate::coredumps::upload_ok(app, &device, "1.0", b"another").await;
        let storage: iotsupport::storage::Storage = std::sync::Arc::new(PrunedWhileListing {
            inner: app.state.storage.clone(),
            db: app.db().clone(),
            id,
            key: layout::coredump_key(&device.key, id).unwrap(),
        });
        // The other dump's object is really missing: that one is reported.
        let missing = layout::coredump_key(&device.key, kept).unwrap();
        app.state.storage.delete(&missing).await.unwrap();
        let report = reconcile::scan(app.db(), &storage, Duration::ZERO)
            .await
            .unwrap();
        let dangling: Vec<i64> = report
            .dangling_coredumps
            .iter()
            .map(|d| d.coredump_id)
            .collect();
        assert_eq!(dangling, [kept], "{report:#?}");
        assert_eq!(report.rows_checked, 1, "{report:#?}");
    })
    .await;
}

/// Two repairs recounting the rotation counters at once both finish (PostgreSQL: the recount's
/// table lock excludes another recount, not only the devices' writers).
#[tokio::test]
async fn two_rotation_recounts_at_once_both_finish() {
    for_each_stack("reconcile_two_recounts", &[], async |app| {
        let model = create_model(app, "recounted", None).await;
        for _ in 0..3 {
            crate::fleet::device_of(app, model).await;
        }
        for round in 0..20 {
            let (a, b) = tokio::join!(
                iotsupport::db::rotation::recount(app.db()),
                iotsupport::db::rotation::recount(app.db())
            );
            assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
        }
        let (_, status) = call(app, http::Method::GET, "/api/rotation/status", None).await;
        assert_eq!(status["counts_by_state"]["OK"], 3, "{status}");
    })
    .await;
}
