//! Per-device retention (SPEC §8): after an upload, keep the newest `MAX_COREDUMPS` dumps of the
//! device by `uploaded_at`. The rows go in the upload's transaction; their objects are recorded in
//! the outbox in that same transaction (golden rule 2), so they disappear once it commits and
//! never before. Their parse jobs still queued are withdrawn in the same transaction.

use crate::db::coredumps;
use crate::db::{DbError, Tx};
use crate::layout::coredump_key;
use crate::outbox;
use crate::storage::ObjectKey;

/// The dumps [`prune_rows`] deleted: their ids, the parses that may still be queued for them
/// (one per dump, of its current generation: a reparse withdraws the one it replaces), and the
/// keys of their objects.
#[derive(Debug, Default)]
pub struct Pruned {
    pub ids: Vec<i64>,
    pub parses: Vec<super::job::ParsePayload>,
    pub keys: Vec<ObjectKey>,
}

/// Deletes the device's dumps beyond the newest `max_coredumps` and schedules their objects for
/// deletion. Returns how many were pruned.
pub async fn enforce(
    tx: &mut Tx,
    device_id: i64,
    device_key: &str,
    max_coredumps: u32,
) -> Result<usize, DbError> {
    let pruned = prune_rows(tx, device_id, device_key, max_coredumps, 0).await?;
    if pruned.ids.is_empty() {
        return Ok(0);
    }
    outbox::schedule_deletion(tx, &pruned.keys).await?;
    let cancelled_parses = super::job::cancel(tx, &pruned.parses).await?;
    log_pruned(device_key, &pruned, cancelled_parses);
    Ok(pruned.ids.len())
}

/// The first half of [`enforce`]: locks the device's retention (see
/// [`coredumps::lock_device_dumps`]) and deletes the rows beyond the newest
/// `max_coredumps`, never dump `spared` (the upload's own; 0 for none). The caller must schedule the returned keys for deletion and withdraw the
/// parse jobs of the returned ids in the same transaction (the upload does both in one statement
/// on PostgreSQL, `crate::coredumps::ingest`).
pub async fn prune_rows(
    tx: &mut Tx,
    device_id: i64,
    device_key: &str,
    max_coredumps: u32,
    spared: i64,
) -> Result<Pruned, DbError> {
    coredumps::lock_device_dumps(tx, device_id).await?;
    prune_locked_rows(tx, device_id, device_key, max_coredumps, spared).await
}

/// [`prune_rows`] for a transaction that already holds the device's retention lock (the upload
/// takes it with its row on PostgreSQL, `coredumps::lock_device_and_insert`).
pub async fn prune_locked_rows(
    tx: &mut Tx,
    device_id: i64,
    device_key: &str,
    max_coredumps: u32,
    spared: i64,
) -> Result<Pruned, DbError> {
    let deleted = coredumps::delete_beyond(tx, device_id, i64::from(max_coredumps), spared).await?;
    let ids: Vec<i64> = deleted.iter().map(|&(id, _)| id).collect();
    let parses = deleted
        .iter()
        .map(|&(coredump_id, generation)| super::job::ParsePayload {
            coredump_id,
            generation,
        })
        .collect();
    // Device keys are validated when devices are created, so these keys are always valid; skip
    // (and report) anything else rather than failing the upload over a cleanup.
    let keys = ids
        .iter()
        .filter_map(|id| match coredump_key(device_key, *id) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(coredump_id = id, error = %e, "coredump_retention_invalid_key");
                None
            }
        })
        .collect();
    Ok(Pruned { ids, parses, keys })
}

/// The log line of a prune that happened.
pub fn log_pruned(device_key: &str, pruned: &Pruned, cancelled_parses: u64) {
    if pruned.ids.is_empty() {
        return;
    }
    tracing::info!(
        device_key,
        pruned_count = pruned.ids.len(),
        cancelled_parses,
        "coredump_retention_pruned"
    );
}
