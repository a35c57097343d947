//! `reconcile --repair`: fixes what a scan found, re-checking each finding inside the transaction
//! that acts on it (see the module above for what each kind means).
//!
//! Objects are never deleted here: they are queued in the outbox in a transaction that holds the
//! model's lock (the lock every firmware change takes first) and re-checks that no row claims
//! them. An upload that starts later cancels the queued deletion of the keys it writes
//! (`crate::outbox::cancel_deletions`); one that committed earlier is seen by the re-check. Either
//! way an object a row names is never deleted, however stale the scan.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{orphans_by_model, ReconcileError, ReconcileReport};
use crate::db::reconcile::{self as queries, MarkedMissing};
use crate::db::{firmware_versions as fw, Db, Tx};
use crate::layout::{self, Artifact, MappedKey};
use crate::outbox;
use crate::storage::{ObjectKey, Storage};

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RepairSummary {
    /// Misplaced objects copied to their key (their old key queued for deletion).
    pub misplaced_moved: usize,
    /// Orphans queued for deletion in the outbox.
    pub orphans_queued: usize,
    /// Orphans a row claimed by the time of the repair (left alone).
    pub orphans_claimed_since: usize,
    pub coredumps_marked_error: usize,
    /// `PARSED` dumps whose object is missing: kept with their report, reported.
    pub parsed_coredumps_left: usize,
    pub firmware_versions_removed: usize,
    pub current_versions_left: usize,
    /// Non-current versions missing some objects but still holding their image or ELF (e.g. an
    /// adopted build the Python service stored without its map): kept, reported.
    pub incomplete_versions_left: usize,
    /// Whether the rotation counters were recounted (the scan found them off).
    pub rotation_counts_recounted: bool,
    /// Devices whose dump count was recounted (the scan found it off).
    pub coredump_counts_recounted: usize,
}

/// Fixes what `report` found; refuses a report that looks like one of the wrong store
/// ([`ReconcileReport::wrong_store`]) unless `force`.
pub async fn repair(
    db: &Db,
    storage: &Storage,
    report: &ReconcileReport,
    force: bool,
) -> Result<RepairSummary, ReconcileError> {
    let mut summary = RepairSummary::default();
    repair_into(db, storage, report, force, &mut summary).await?;
    Ok(summary)
}

/// [`repair`], counting into `summary` as it goes: each step commits its own transactions, so a
/// repair that fails part-way has done what `summary` says, which the caller can show.
pub async fn repair_into(
    db: &Db,
    storage: &Storage,
    report: &ReconcileReport,
    force: bool,
    summary: &mut RepairSummary,
) -> Result<(), ReconcileError> {
    if let Some(reason) = report.wrong_store() {
        if !force {
            return Err(ReconcileError::Refused(format!(
                "{reason} (if this is the right bucket and database, repair with --force)"
            )));
        }
        tracing::warn!(reason = %reason, "reconcile_repair_forced");
    }
    move_misplaced(db, storage, report, summary).await?;
    queue_orphans(db, report, summary).await?;
    mark_dangling_dumps(db, storage, report, summary).await?;
    remove_dangling_versions(db, storage, report, summary).await?;
    if !report.rotation_count_drift.is_empty() {
        crate::db::rotation::recount(db).await?;
        summary.rotation_counts_recounted = true;
    }
    for drift in &report.coredump_count_drift {
        if crate::db::coredumps::recount(db, drift.device_id).await? {
            summary.coredump_counts_recounted += 1;
        }
    }
    tracing::info!(
        misplaced_moved = summary.misplaced_moved,
        orphans_queued = summary.orphans_queued,
        coredumps_marked_error = summary.coredumps_marked_error,
        firmware_versions_removed = summary.firmware_versions_removed,
        rotation_counts_recounted = summary.rotation_counts_recounted,
        coredump_counts_recounted = summary.coredump_counts_recounted,
        "reconcile_repaired"
    );
    Ok(())
}

/// Copies each misplaced object of a still-stored version to its key (unless something is there
/// already), then queues the old key for deletion, all under the model's lock.
async fn move_misplaced(
    db: &Db,
    storage: &Storage,
    report: &ReconcileReport,
    summary: &mut RepairSummary,
) -> Result<(), ReconcileError> {
    let mut by_version: BTreeMap<(&str, &str), Vec<(ObjectKey, ObjectKey)>> = BTreeMap::new();
    for m in &report.misplaced {
        by_version
            .entry((m.model_code.as_str(), m.version.as_str()))
            .or_default()
            .push((
                ObjectKey::parse(m.key.clone())?,
                ObjectKey::parse(m.belongs_at.clone())?,
            ));
    }
    for ((code, version), moves) in by_version {
        let mut tx = db.begin().await?;
        if queries::lock_model_by_code(&mut tx, code).await?.is_none()
            || !queries::firmware_version_exists(&mut tx, code, version).await?
        {
            continue; // deleted since the scan: the next scan calls these orphans
        }
        summary.misplaced_moved += rekey(&mut tx, storage, &moves).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Copies `from` → `to` where `to` is missing, and queues every `from` for deletion. The caller
/// holds the model's lock. Returns how many objects were copied.
async fn rekey(
    tx: &mut Tx,
    storage: &Storage,
    moves: &[(ObjectKey, ObjectKey)],
) -> Result<usize, ReconcileError> {
    let mut copied = 0;
    for (from, to) in moves {
        match storage.head(to).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                storage.copy(from, to).await?;
                copied += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let old: Vec<ObjectKey> = moves.iter().map(|(from, _)| from.clone()).collect();
    outbox::schedule_deletion(tx, &old).await?;
    Ok(copied)
}

/// Moves every object of stored versions that an earlier release wrote under a percent-encoded
/// key (`2.1%7Erc1` for `2.1~rc1`) to its key. Run once after upgrading (a job queued by a
/// migration) and by `reconcile --repair`; finds nothing to do the second time.
pub async fn rekey_legacy_encoded(db: &Db, storage: &Storage) -> Result<usize, ReconcileError> {
    let mut tx = db.begin().await?;
    let versions = queries::all_firmware_versions(&mut tx).await?;
    tx.rollback().await?;
    let mut moved = 0;
    for (code, version) in versions {
        let Some(encoded) = layout::legacy_encoded_version(&version) else {
            continue;
        };
        if crate::fleet::FirmwareVersion::parse(&version).is_err() {
            continue; // not a key component today: reconcile reports it, nothing acts on it
        }
        let mut moves = Vec::new();
        for artifact in Artifact::ALL {
            let from = layout::firmware_key(&code, &encoded, artifact)?;
            match storage.head(&from).await {
                Ok(_) => moves.push((from, layout::firmware_key(&code, &version, artifact)?)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if moves.is_empty() {
            continue;
        }
        let mut tx = db.begin().await?;
        let Some(model_id) = queries::lock_model_by_code(&mut tx, &code).await? else {
            continue;
        };
        if !queries::firmware_version_exists(&mut tx, &code, &version).await?
            // The Python service stored a version spelt like the encoding under its own name:
            // those objects are its own, not copies of this version's.
            || fw::encoding_is_a_version(&mut tx, model_id, &version).await?
        {
            continue;
        }
        moved += rekey(&mut tx, storage, &moves).await?;
        tx.commit().await?;
        tracing::info!(model_code = %code, version = %version, "firmware_objects_rekeyed");
    }
    Ok(moved)
}

/// Queues orphans for deletion, per model under its lock, after re-checking that no row claims
/// them now.
async fn queue_orphans(
    db: &Db,
    report: &ReconcileReport,
    summary: &mut RepairSummary,
) -> Result<(), ReconcileError> {
    let (firmware, coredumps) = orphans_by_model(report);
    for (code, keys) in firmware {
        let mut tx = db.begin().await?;
        if queries::lock_model_by_code(&mut tx, &code).await?.is_none() {
            // No model to lock: hold off model creation for this short transaction instead, so
            // no upload of these keys can start before the deletions are visible to it; and lock
            // a model created just before that (its upload could otherwise run meanwhile).
            queries::lock_model_creation(&mut tx).await?;
            queries::lock_model_by_code(&mut tx, &code).await?;
        }
        let mut doomed = Vec::new();
        for key in keys {
            let claimed = match layout::map_key(key.as_str()) {
                MappedKey::Firmware { version, .. } => {
                    queries::firmware_version_exists(&mut tx, &code, &version).await?
                }
                // A misplaced copy with no row left: nothing will ever read it; unless a row
                // holds the version as the key writes it (adopted from the Python service).
                MappedKey::LegacyEncoded {
                    version, encoded, ..
                } => {
                    queries::firmware_version_exists(&mut tx, &code, &version).await?
                        || queries::firmware_version_exists(&mut tx, &code, &encoded).await?
                }
                _ => true,
            };
            if claimed {
                summary.orphans_claimed_since += 1;
            } else {
                doomed.push(key);
            }
        }
        outbox::schedule_deletion(&mut tx, &doomed).await?;
        tx.commit().await?;
        summary.orphans_queued += doomed.len();
    }
    // Dump ids are never handed out again on PostgreSQL (a sequence), and SQLite serialises
    // writers, so the re-check in the transaction is enough; it names the device too, as the
    // scan does: SQLite hands a rolled-back id out again, possibly to another device, whose row
    // must not keep this device's orphan alive. Keep the grace period above the longest upload:
    // on PostgreSQL a dump's object is stored before its row commits.
    let mut tx = db.begin().await?;
    let mut doomed = Vec::new();
    for key in coredumps {
        let MappedKey::Coredump {
            coredump_id,
            device_key,
        } = layout::map_key(key.as_str())
        else {
            continue;
        };
        if queries::coredump_exists(&mut tx, coredump_id, &device_key).await? {
            summary.orphans_claimed_since += 1;
        } else {
            doomed.push(key);
        }
    }
    outbox::schedule_deletion(&mut tx, &doomed).await?;
    tx.commit().await?;
    summary.orphans_queued += doomed.len();
    Ok(())
}

/// Marks dumps whose object is still missing `ERROR`, except parsed ones (their report is what
/// is left of the crash).
async fn mark_dangling_dumps(
    db: &Db,
    storage: &Storage,
    report: &ReconcileReport,
    summary: &mut RepairSummary,
) -> Result<(), ReconcileError> {
    for dump in &report.dangling_coredumps {
        let key = ObjectKey::parse(dump.object_key.clone())?;
        if is_present(storage, &key).await? {
            continue;
        }
        let message = format!(
            "The core dump object {} is missing from the object store (found by reconcile)",
            dump.object_key
        );
        let mut tx = db.begin().await?;
        match queries::mark_coredump_missing(&mut tx, dump.coredump_id, &message).await? {
            MarkedMissing::Marked => summary.coredumps_marked_error += 1,
            MarkedMissing::ParsedKept => summary.parsed_coredumps_left += 1,
            MarkedMissing::Unchanged => {}
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Removes non-current versions that still miss an object and hold neither their image nor their
/// ELF, under the model's lock; what is left of their objects goes through the outbox.
async fn remove_dangling_versions(
    db: &Db,
    storage: &Storage,
    report: &ReconcileReport,
    summary: &mut RepairSummary,
) -> Result<(), ReconcileError> {
    for f in &report.dangling_firmware {
        if f.is_current {
            summary.current_versions_left += 1;
            continue;
        }
        let mut tx = db.begin().await?;
        let Some(model_id) = queries::lock_model_by_code(&mut tx, &f.model_code).await? else {
            continue;
        };
        // Its keys and an earlier release's encoded copies (the scan reports only versions that
        // are key components today), unless those are a literal version's own.
        let spare = fw::encoding_is_a_version(&mut tx, model_id, &f.version).await?;
        let keys = layout::deletable_keys(&f.model_code, &f.version, spare)?;
        let mut complete = true;
        let mut of_value = false;
        for artifact in Artifact::ALL {
            let mut found = false;
            for key in keys
                .iter()
                .filter(|k| k.as_str().ends_with(artifact.file_name()))
            {
                found |= is_present(storage, key).await?;
            }
            complete &= found;
            of_value |= found && matches!(artifact, Artifact::Bin | Artifact::Elf);
        }
        if complete {
            continue; // whole again (re-uploaded since the scan)
        }
        if of_value {
            // Its image can still be served, or its ELF still parses its dumps: removing the row
            // would delete them with it.
            summary.incomplete_versions_left += 1;
            continue;
        }
        if queries::delete_version_unless_current(&mut tx, &f.model_code, &f.version).await? {
            outbox::schedule_deletion(&mut tx, &keys).await?;
            summary.firmware_versions_removed += 1;
        } else {
            summary.current_versions_left += 1;
        }
        tx.commit().await?;
    }
    Ok(())
}

async fn is_present(storage: &Storage, key: &ObjectKey) -> Result<bool, ReconcileError> {
    match storage.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}
