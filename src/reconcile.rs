//! Keeping the bucket honest (SPEC §4 rule 4): list `firmware/` and `coredumps/` against the
//! database and report — and with `repair`, fix — what disagrees.
//!
//! Every listed key is read back through [`crate::layout::map_key`]; only keys that map back to a
//! model and version, or a device and dump id, are ever acted on.
//!
//! - **Orphans**: mapped objects no row accounts for (a crash between upload and commit, a failed
//!   best-effort cleanup), older than the grace period and not already queued for deletion.
//!   Repair queues them in the outbox, in a transaction that re-checks, under the model's lock,
//!   that still no row claims them (an upload of the same version cancels the deletion or waits
//!   for it, `crate::outbox`), so a scan that went stale can never delete a new upload's objects.
//! - **Misplaced objects**: firmware objects under the percent-encoded key an earlier release
//!   wrote (`2.1%7Erc1` for `2.1~rc1`). Repair copies each to its key and queues the old one for
//!   deletion; the version is never reported dangling for it.
//! - **Dangling rows**: firmware versions missing any of their five objects (at their key and at
//!   any earlier release's key), core dumps missing their `.dmp`. Repair re-checks with the store,
//!   then marks such dumps `ERROR` and removes such firmware versions, unless the version is the
//!   model's current one, which is reported for an operator to re-upload.
//! - **Unrecognised keys and unsupported versions**: keys that do not map back, and rows whose
//!   version is not a valid key component today (a `%` from an earlier release): reported, never
//!   acted on.
//! - **Current versions**: each model's `firmware_version` and whether it names a stored version.
//! - **Rotation counters**: `device_rotation_counts` (kept by triggers, migration 16) against a
//!   count of the devices. They can only disagree if the triggers were bypassed (disabled by hand,
//!   a partial restore); repair recounts them while no device can change.
//! - **Dump counts**: each device's `coredump_count` (kept by triggers, migration 24; retention
//!   goes by it) against a count of its dumps. The same: only bypassed triggers make them
//!   disagree, and repair recounts each device that is off under its retention lock.
//!
//! Repair is idempotent: a second run finds nothing left to do. It refuses a scan that looks like
//! one of the wrong store ([`ReconcileReport::wrong_store`]) unless forced, and the CLI never
//! creates the bucket it scans.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{self, reconcile as queries, Db, DbError};
use crate::fleet::FirmwareVersion;
use crate::layout::{self, Artifact, MappedKey};
use crate::storage::{ObjectInfo, ObjectKey, Storage, StorageError};

mod rekey_job;
mod repair;

pub use rekey_job::{RekeyFirmwareObjects, REKEY_JOB};
pub use repair::{rekey_legacy_encoded, repair, repair_into, RepairSummary};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Key(#[from] crate::storage::InvalidKey),
    /// The scan looks like one of the wrong store; see [`ReconcileReport::wrong_store`].
    #[error("refusing to repair: {0}")]
    Refused(String),
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

/// A firmware object stored under an earlier release's percent-encoded key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MisplacedObject {
    /// Where it is.
    pub key: String,
    /// Where it belongs.
    pub belongs_at: String,
    pub model_code: String,
    pub version: String,
}

/// A version row whose version cannot be a key component today.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnsupportedVersion {
    pub model_code: String,
    pub version: String,
    pub reason: String,
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    pub objects_scanned: usize,
    /// Objects in the layout that a row names.
    pub objects_claimed: usize,
    /// Firmware versions and core dumps whose objects were looked for (legacy dumps and
    /// unsupported versions aside).
    pub rows_checked: usize,
    pub orphans: Vec<ObjectInfo>,
    /// Objects without a row that are younger than the grace period (left alone).
    pub recent_unclaimed: usize,
    /// Objects without a row whose deletion is already queued in the outbox.
    pub queued_for_deletion: usize,
    pub misplaced: Vec<MisplacedObject>,
    pub dangling_firmware: Vec<DanglingFirmware>,
    pub dangling_coredumps: Vec<DanglingCoredump>,
    /// Keys under `firmware/` or `coredumps/` that are not in the layout.
    pub unrecognised: Vec<String>,
    pub unsupported_versions: Vec<UnsupportedVersion>,
    pub current_versions: Vec<CurrentVersion>,
    /// Rows of an adopted database whose dump is still a file in the Python service's
    /// `COREDUMPS_DIR` (`coredumps.filename` set): neither dangling nor repaired; `migrate-to-s3`
    /// moves them.
    pub legacy_coredumps: usize,
    /// Counters of `device_rotation_counts` that disagree with a count of the devices.
    pub rotation_count_drift: Vec<db::rotation::CountDrift>,
    /// Devices whose `coredump_count` disagrees with a count of their dumps.
    pub coredump_count_drift: Vec<db::coredumps::DumpCountDrift>,
}

/// At least this many dangling rows, more than half of those checked, make a scan look like one
/// of the wrong store (see [`ReconcileReport::wrong_store`]); as many orphans, more than the
/// objects rows name, one of the wrong database.
const WRONG_STORE_MIN_DANGLING: usize = 10;

impl ReconcileReport {
    /// Why this scan looks like one of the wrong store (a mistyped bucket or endpoint, another
    /// deployment's bucket, a restore of the database without the bucket): the store holds
    /// nothing the database names, or most of it is missing. Repairing it would remove the
    /// versions and fail the dumps, and a later run against the right store would then find
    /// every real object an orphan. `None` when it looks like the right one.
    pub fn wrong_store(&self) -> Option<String> {
        let dangling = self.dangling_firmware.len() + self.dangling_coredumps.len();
        if dangling == 0 {
            return self.wrong_database();
        }
        if self.objects_scanned == 0 {
            return Some(format!(
                "the object store holds nothing under firmware/ or coredumps/, yet the database \
                 names objects for {dangling} row(s): is this the right bucket and endpoint?"
            ));
        }
        if dangling == self.rows_checked {
            // Objects, but none of this database's: another deployment's bucket, whose objects
            // would all be queued as orphans.
            return Some(format!(
                "none of the {dangling} row(s) checked has its objects in this store, which \
                 holds {} other object(s): is this the right bucket and endpoint?",
                self.objects_scanned
            ));
        }
        if dangling >= WRONG_STORE_MIN_DANGLING && dangling * 2 > self.rows_checked {
            return Some(format!(
                "{dangling} of {} rows miss their objects: is this the right bucket and endpoint?",
                self.rows_checked
            ));
        }
        self.wrong_database()
    }

    /// The mirror image: a database that names little or nothing of what the store holds (an
    /// empty or freshly migrated one, a restore not yet loaded, a stray embedded database, the
    /// Python service's bucket before its database was adopted). Every object would be an orphan
    /// and deleted.
    fn wrong_database(&self) -> Option<String> {
        let orphans = self.orphans.len();
        if orphans == 0 {
            return None;
        }
        if self.rows_checked == 0 {
            return Some(format!(
                "the database names no firmware or core dumps, yet the object store holds {orphans} \
                 object(s) without a row: is this the right database (DATABASE_URL), and was the \
                 Python service's database adopted (`iotsupport migrate`)?"
            ));
        }
        if orphans >= WRONG_STORE_MIN_DANGLING && orphans > self.objects_claimed {
            return Some(format!(
                "{orphans} object(s) have no row, more than the {} the database names: is this \
                 the right database (DATABASE_URL) for this bucket?",
                self.objects_claimed
            ));
        }
        None
    }
}

/// Compares the bucket with the database. `grace`: objects younger than this are never orphans.
/// Dangling rows this many at most are read again before they are reported; more is the
/// wrong-store case, which the report refuses to repair anyway.
const RECHECK_DANGLING: usize = 1000;

/// Drops from the report the dangling rows that are gone since the rows were read: a dump pruned
/// (or a version deleted) between reading the rows and listing the objects has no object any
/// more, and no row either. They are not dangling, and counting them could make a busy fleet's
/// scan look like the wrong store.
async fn still_there(db: &Db, report: &mut ReconcileReport) -> Result<(), ReconcileError> {
    let dangling = report.dangling_firmware.len() + report.dangling_coredumps.len();
    if dangling == 0 || dangling > RECHECK_DANGLING {
        return Ok(());
    }
    let mut tx = db.begin_read().await?;
    let mut firmware = Vec::new();
    for row in std::mem::take(&mut report.dangling_firmware) {
        if queries::firmware_version_exists(&mut tx, &row.model_code, &row.version).await? {
            firmware.push(row);
        } else {
            report.rows_checked -= 1;
        }
    }
    let mut dumps = Vec::new();
    for row in std::mem::take(&mut report.dangling_coredumps) {
        if queries::coredump_exists(&mut tx, row.coredump_id, &row.device_key).await? {
            dumps.push(row);
        } else {
            report.rows_checked -= 1;
        }
    }
    tx.commit().await?;
    report.dangling_firmware = firmware;
    report.dangling_coredumps = dumps;
    Ok(())
}

/// What a scan is doing, for a progress display (`iotsupport reconcile`).
#[derive(Debug, Clone, Copy)]
pub enum ScanStep<'a> {
    /// Reading the firmware, dump and model rows.
    ReadingRows,
    /// Listing the objects under `prefix`: `listed` of them so far.
    Listing { prefix: &'a str, listed: usize },
    /// Matching `objects` against `rows` (firmware versions and dumps).
    Checking { objects: usize, rows: usize },
}

pub async fn scan(
    db: &Db,
    storage: &Storage,
    grace: Duration,
) -> Result<ReconcileReport, ReconcileError> {
    scan_showing(db, storage, grace, &|_| {}).await
}

/// [`scan`], telling `progress` what it is doing as it goes.
pub async fn scan_showing(
    db: &Db,
    storage: &Storage,
    grace: Duration,
    progress: &(dyn Fn(ScanStep<'_>) + Send + Sync),
) -> Result<ReconcileReport, ReconcileError> {
    // Rows first, then objects: an object uploaded and committed between the two reads is still
    // recent, and so protected by the grace period rather than reported as an orphan. The cutoff
    // is taken before both, however long the listing takes.
    let cutoff: DateTime<Utc> = db::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    progress(ScanStep::ReadingRows);
    let rows = queries::scan_rows(db).await?;
    let (firmware, dumps, models) = (rows.firmware, rows.dumps, rows.models);
    let queued: HashSet<String> = rows.queued_deletions.into_iter().collect();

    let mut objects = Vec::new();
    for prefix in [layout::FIRMWARE_PREFIX, layout::COREDUMP_PREFIX] {
        progress(ScanStep::Listing { prefix, listed: 0 });
        let step = |listed| progress(ScanStep::Listing { prefix, listed });
        objects.extend(storage.list_counted(prefix, &step).await?);
    }
    progress(ScanStep::Checking {
        objects: objects.len(),
        rows: firmware.len() + dumps.len(),
    });
    let mut report = ReconcileReport {
        objects_scanned: objects.len(),
        ..Default::default()
    };

    let versions: HashSet<(&str, &str)> = firmware
        .iter()
        .map(|f| (f.code.as_str(), f.version.as_str()))
        .collect();
    let dump_owners: HashMap<i64, &str> = dumps.iter().map(|d| (d.id, d.key.as_str())).collect();
    let present: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();

    for object in &objects {
        let claimed = match layout::map_key(&object.key) {
            MappedKey::Firmware {
                model_code,
                version,
                ..
            } => versions.contains(&(model_code.as_str(), version.as_str())),
            MappedKey::Coredump {
                device_key,
                coredump_id,
            } => dump_owners.get(&coredump_id) == Some(&device_key.as_str()),
            MappedKey::LegacyEncoded {
                model_code,
                version,
                artifact,
                encoded,
            } => {
                // A version the Python service stored literally (`2.1%7Erc1`, adopted) owns
                // this key as written: it is neither misplaced nor an orphan.
                if versions.contains(&(model_code.as_str(), encoded.as_str())) {
                    report.objects_claimed += 1;
                    continue;
                }
                let claimed = versions.contains(&(model_code.as_str(), version.as_str()));
                if claimed {
                    report.misplaced.push(MisplacedObject {
                        key: object.key.clone(),
                        belongs_at: layout::firmware_key(&model_code, &version, artifact)?
                            .to_string(),
                        model_code,
                        version,
                    });
                }
                claimed
            }
            MappedKey::Unknown => {
                report.unrecognised.push(object.key.clone());
                continue;
            }
        };
        if claimed {
            report.objects_claimed += 1;
            continue;
        }
        if queued.contains(&object.key) {
            report.queued_for_deletion += 1;
        } else if object.last_modified > cutoff {
            report.recent_unclaimed += 1;
        } else {
            report.orphans.push(object.clone());
        }
    }

    for row in &firmware {
        if let Err(reason) = FirmwareVersion::parse(&row.version) {
            report.unsupported_versions.push(UnsupportedVersion {
                model_code: row.code.clone(),
                version: row.version.clone(),
                reason,
            });
            continue;
        }
        report.rows_checked += 1;
        let mut missing = Vec::new();
        for artifact in Artifact::ALL {
            let key = layout::firmware_key(&row.code, &row.version, artifact)?;
            let misplaced = layout::legacy_encoded_version(&row.version)
                .map(|encoded| layout::firmware_key(&row.code, &encoded, artifact))
                .transpose()?;
            let found = present.contains(key.as_str())
                || misplaced.is_some_and(|k| present.contains(k.as_str()));
            if !found {
                missing.push(artifact.file_name().to_string());
            }
        }
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
        if row.legacy {
            report.legacy_coredumps += 1;
            continue;
        }
        report.rows_checked += 1;
        let key = layout::coredump_key(&row.key, row.id)?;
        if !present.contains(key.as_str()) {
            report.dangling_coredumps.push(DanglingCoredump {
                coredump_id: row.id,
                device_key: row.key.clone(),
                object_key: key.to_string(),
            });
        }
    }
    still_there(db, &mut report).await?;
    report.orphans.sort_by(|a, b| a.key.cmp(&b.key));
    report.unrecognised.sort();
    report.misplaced.sort_by(|a, b| a.key.cmp(&b.key));
    report.current_versions = models
        .iter()
        .map(|m| CurrentVersion {
            model_code: m.code.clone(),
            firmware_version: m.firmware_version.clone(),
            stored: m
                .firmware_version
                .as_deref()
                .is_none_or(|v| versions.contains(&(m.code.as_str(), v))),
        })
        .collect();
    report.rotation_count_drift = db::rotation::count_drift(db).await?;
    report.coredump_count_drift = db::coredumps::count_drift(db).await?;
    publish_metrics(&report);
    Ok(report)
}

/// The orphans grouped for repair: firmware objects by model code, core dumps apart.
fn orphans_by_model(
    report: &ReconcileReport,
) -> (BTreeMap<String, Vec<ObjectKey>>, Vec<ObjectKey>) {
    let mut firmware: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
    let mut coredumps = Vec::new();
    for orphan in &report.orphans {
        let Ok(key) = ObjectKey::parse(orphan.key.clone()) else {
            continue;
        };
        match layout::map_key(key.as_str()) {
            MappedKey::Firmware { model_code, .. }
            | MappedKey::LegacyEncoded { model_code, .. } => {
                firmware.entry(model_code).or_default().push(key)
            }
            MappedKey::Coredump { .. } => coredumps.push(key),
            MappedKey::Unknown => {}
        }
    }
    (firmware, coredumps)
}

fn publish_metrics(report: &ReconcileReport) {
    metrics::gauge!(crate::telemetry::RECONCILE_ORPHANS).set(report.orphans.len() as f64);
    metrics::gauge!(crate::telemetry::RECONCILE_DANGLING, "kind" => "firmware")
        .set(report.dangling_firmware.len() as f64);
    metrics::gauge!(crate::telemetry::RECONCILE_DANGLING, "kind" => "coredump")
        .set(report.dangling_coredumps.len() as f64);
    metrics::gauge!(crate::telemetry::RECONCILE_MISPLACED).set(report.misplaced.len() as f64);
    metrics::gauge!(crate::telemetry::RECONCILE_UNRECOGNISED).set(report.unrecognised.len() as f64);
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
            Ok(report) => {
                tracing::info!(
                    orphans = report.orphans.len(),
                    misplaced = report.misplaced.len(),
                    dangling_firmware = report.dangling_firmware.len(),
                    dangling_coredumps = report.dangling_coredumps.len(),
                    unrecognised = report.unrecognised.len(),
                    rotation_count_drift = report.rotation_count_drift.len(),
                    coredump_count_drift = report.coredump_count_drift.len(),
                    "reconcile_scan"
                );
                if let Some(reason) = report.wrong_store() {
                    tracing::warn!(reason = %reason, "reconcile_scan_wrong_store");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reconcile_scan_failed"),
        }
    }
}
