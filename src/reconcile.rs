//! Keeping the bucket honest (SPEC §4 rule 4): list `firmware/` and `coredumps/` against the
//! database and report — and with `repair`, fix — what disagrees.
//!
//! - **Orphans**: objects no row accounts for (a crash between upload and commit, a failed
//!   best-effort cleanup). Only objects older than the grace period count, so an upload in flight
//!   is never mistaken for one. Repair deletes them.
//! - **Dangling rows**: firmware versions missing any of their five objects, core dumps missing
//!   their `.dmp`. Repair marks such dumps `ERROR` and removes such firmware versions — unless the
//!   version is the model's current one, which is reported for an operator to re-upload.
//! - **Current versions**: each model's `firmware_version` and whether it names a stored version.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{self, Db, DbError};
use crate::storage::{ObjectInfo, ObjectKey, Storage, StorageError, FIRMWARE_ARTIFACTS};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DanglingFirmware {
    pub model_code: String,
    pub version: String,
    pub missing: Vec<String>,
    pub is_current: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DanglingCoredump {
    pub coredump_id: i64,
    pub device_key: String,
    pub object_key: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CurrentVersion {
    pub model_code: String,
    pub firmware_version: Option<String>,
    /// False when the pointer names a version that is not stored (golden rule 3 broken).
    pub stored: bool,
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    pub objects_scanned: usize,
    pub orphans: Vec<ObjectInfo>,
    /// Objects without a row that are younger than the grace period (left alone).
    pub recent_unclaimed: usize,
    /// Objects without a row whose deletion is already queued in the outbox.
    pub queued_for_deletion: usize,
    pub dangling_firmware: Vec<DanglingFirmware>,
    pub dangling_coredumps: Vec<DanglingCoredump>,
    pub current_versions: Vec<CurrentVersion>,
    /// Rows of an adopted database whose dump is still a file in the Python service's
    /// `COREDUMPS_DIR` (`coredumps.filename` set): neither dangling nor repaired; `migrate-to-s3`
    /// moves them.
    pub legacy_coredumps: usize,
}

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RepairSummary {
    pub orphans_deleted: usize,
    pub orphans_failed: usize,
    pub coredumps_marked_error: usize,
    pub firmware_versions_removed: usize,
    pub current_versions_left: usize,
}

#[derive(sqlx::FromRow)]
struct FirmwareRow {
    code: String,
    version: String,
    current: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CoredumpRow {
    id: i64,
    key: String,
    /// The row still names a file of the Python service's `COREDUMPS_DIR` (adopted database,
    /// `migrate-to-s3` not run yet): its object is not expected in the bucket yet.
    legacy: bool,
}

#[derive(sqlx::FromRow)]
struct ModelRow {
    code: String,
    firmware_version: Option<String>,
}

/// Compares the bucket with the database. `grace`: objects younger than this are never orphans.
pub async fn scan(
    db: &Db,
    storage: &Storage,
    grace: Duration,
) -> Result<ReconcileReport, ReconcileError> {
    // Rows first, then objects: an object uploaded and committed between the two reads is still
    // recent, and so protected by the grace period rather than reported as an orphan.
    let firmware: Vec<FirmwareRow> = crate::on_pool!(db, |p| sqlx::query_as::<_, FirmwareRow>(
        "SELECT m.code, f.version, m.firmware_version AS current
         FROM firmware_versions f JOIN device_models m ON m.id = f.device_model_id"
    )
    .fetch_all(p)
    .await)
    .map_err(DbError::from)?;
    let legacy_column = db::adopt::has_filename_column(db)
        .await
        .map_err(DbError::from)?;
    let dumps_sql = if legacy_column {
        "SELECT c.id, d.key, c.filename IS NOT NULL AS legacy
         FROM coredumps c JOIN devices d ON d.id = c.device_id"
    } else {
        "SELECT c.id, d.key, FALSE AS legacy FROM coredumps c JOIN devices d ON d.id = c.device_id"
    };
    let dumps: Vec<CoredumpRow> =
        crate::on_pool!(db, |p| sqlx::query_as::<_, CoredumpRow>(dumps_sql)
            .fetch_all(p)
            .await)
        .map_err(DbError::from)?;
    let models: Vec<ModelRow> = crate::on_pool!(db, |p| sqlx::query_as::<_, ModelRow>(
        "SELECT code, firmware_version FROM device_models ORDER BY code"
    )
    .fetch_all(p)
    .await)
    .map_err(DbError::from)?;

    // Objects already queued in the outbox are on their way out: not orphans.
    let queued: Vec<String> = crate::on_pool!(db, |p| sqlx::query_scalar(
        "SELECT object_key FROM object_deletions"
    )
    .fetch_all(p)
    .await)
    .map_err(DbError::from)?;

    let mut objects = storage.list("firmware").await?;
    objects.extend(storage.list("coredumps").await?);
    let present: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();

    let mut expected: HashSet<String> = HashSet::new();
    let queued: HashSet<String> = queued.into_iter().collect();
    let mut report = ReconcileReport {
        objects_scanned: objects.len(),
        ..Default::default()
    };
    for row in &firmware {
        let missing: Vec<String> = FIRMWARE_ARTIFACTS
            .iter()
            .map(|a| format!("firmware/{}/{}/{a}", row.code, row.version))
            .inspect(|k| {
                expected.insert(k.clone());
            })
            .filter(|k| !present.contains(k.as_str()))
            .map(|k| k.rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        if !missing.is_empty() {
            report.dangling_firmware.push(DanglingFirmware {
                model_code: row.code.clone(),
                version: row.version.clone(),
                missing,
                is_current: row.current.as_deref() == Some(row.version.as_str()),
            });
        }
    }
    for row in &dumps {
        let key = format!("coredumps/{}/{}.dmp", row.key, row.id);
        if row.legacy {
            report.legacy_coredumps += 1;
        } else if !present.contains(key.as_str()) {
            report.dangling_coredumps.push(DanglingCoredump {
                coredump_id: row.id,
                device_key: row.key.clone(),
                object_key: key.clone(),
            });
        }
        expected.insert(key);
    }
    let cutoff: DateTime<Utc> = db::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    for object in objects {
        if expected.contains(&object.key) {
            continue;
        }
        if queued.contains(&object.key) {
            report.queued_for_deletion += 1;
            continue;
        }
        if object.last_modified > cutoff {
            report.recent_unclaimed += 1;
        } else {
            report.orphans.push(object);
        }
    }
    report.orphans.sort_by(|a, b| a.key.cmp(&b.key));
    let stored: HashSet<(&str, &str)> = firmware
        .iter()
        .map(|f| (f.code.as_str(), f.version.as_str()))
        .collect();
    report.current_versions = models
        .iter()
        .map(|m| CurrentVersion {
            model_code: m.code.clone(),
            firmware_version: m.firmware_version.clone(),
            stored: m
                .firmware_version
                .as_deref()
                .is_none_or(|v| stored.contains(&(m.code.as_str(), v))),
        })
        .collect();
    publish_metrics(&report);
    Ok(report)
}

fn publish_metrics(report: &ReconcileReport) {
    metrics::gauge!(crate::telemetry::RECONCILE_ORPHANS).set(report.orphans.len() as f64);
    metrics::gauge!(crate::telemetry::RECONCILE_DANGLING, "kind" => "firmware")
        .set(report.dangling_firmware.len() as f64);
    metrics::gauge!(crate::telemetry::RECONCILE_DANGLING, "kind" => "coredump")
        .set(report.dangling_coredumps.len() as f64);
}

/// Fixes what `report` found: deletes orphans, marks dangling dumps `ERROR`, removes dangling
/// non-current firmware versions (their remaining objects go through the outbox).
pub async fn repair(
    db: &Db,
    storage: &Storage,
    report: &ReconcileReport,
) -> Result<RepairSummary, ReconcileError> {
    let mut summary = RepairSummary::default();
    let keys: Vec<ObjectKey> = report
        .orphans
        .iter()
        .filter_map(|o| ObjectKey::parse(o.key.clone()).ok())
        .collect();
    for result in storage.delete_many(&keys).await {
        match result {
            Ok(()) => summary.orphans_deleted += 1,
            Err(e) => {
                tracing::warn!(error = %e, "reconcile_orphan_delete_failed");
                summary.orphans_failed += 1;
            }
        }
    }

    let mut tx = db.begin().await?;
    let now = db::now();
    for dump in &report.dangling_coredumps {
        let message = format!(
            "The core dump object {} is missing from the object store (found by reconcile)",
            dump.object_key
        );
        summary.coredumps_marked_error += crate::on_conn!(&mut tx, |c| sqlx::query(
            "UPDATE coredumps SET parse_status = 'ERROR', parsed_output = $1, parsed_at = $2, updated_at = $2
             WHERE id = $3"
        )
        .bind(&message)
        .bind(now)
        .bind(dump.coredump_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(DbError::from)? as usize;
    }
    let mut by_model: HashMap<&str, Vec<&DanglingFirmware>> = HashMap::new();
    for f in &report.dangling_firmware {
        by_model.entry(f.model_code.as_str()).or_default().push(f);
    }
    for (code, versions) in by_model {
        for f in versions {
            if f.is_current {
                summary.current_versions_left += 1;
                continue;
            }
            // Re-check "not current" in the statement itself: the pointer may have moved.
            let removed = crate::on_conn!(&mut tx, |c| sqlx::query(
                "DELETE FROM firmware_versions WHERE version = $1 AND device_model_id =
                    (SELECT id FROM device_models WHERE code = $2
                     AND (firmware_version IS NULL OR firmware_version <> $1))"
            )
            .bind(&f.version)
            .bind(code)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))
            .map_err(DbError::from)?;
            if removed == 1 {
                let keys: Vec<ObjectKey> = FIRMWARE_ARTIFACTS
                    .iter()
                    .filter_map(|a| {
                        ObjectKey::from_segments(&["firmware", code, &f.version, a]).ok()
                    })
                    .collect();
                crate::outbox::schedule_deletion(&mut tx, &keys).await?;
                summary.firmware_versions_removed += 1;
            }
        }
    }
    tx.commit().await?;
    tracing::info!(
        orphans_deleted = summary.orphans_deleted,
        coredumps_marked_error = summary.coredumps_marked_error,
        firmware_versions_removed = summary.firmware_versions_removed,
        "reconcile_repaired"
    );
    Ok(summary)
}

/// The optional periodic sweep inside `serve`: scans (never repairs), logs a summary and updates
/// the metrics, until `shutdown` fires.
pub async fn run_periodic(
    db: Db,
    storage: Storage,
    interval: Duration,
    grace: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        match scan(&db, &storage, grace).await {
            Ok(report) => tracing::info!(
                orphans = report.orphans.len(),
                dangling_firmware = report.dangling_firmware.len(),
                dangling_coredumps = report.dangling_coredumps.len(),
                "reconcile_scan"
            ),
            Err(e) => tracing::warn!(error = %e, "reconcile_scan_failed"),
        }
    }
}
