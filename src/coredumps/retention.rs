//! Per-device retention (SPEC §8): after an upload, keep the newest `MAX_COREDUMPS` dumps of the
//! device by `uploaded_at`. The rows go in the upload's transaction; their objects are recorded in
//! the outbox in that same transaction (golden rule 2), so they disappear once it commits and
//! never before. Their parse jobs still queued are withdrawn in the same transaction.

use crate::db::coredumps;
use crate::db::{DbError, Tx};
use crate::layout::coredump_key;
use crate::outbox;

/// Deletes the device's dumps beyond the newest `max_coredumps` and schedules their objects for
/// deletion. Returns how many were pruned.
pub async fn enforce(
    tx: &mut Tx,
    device_id: i64,
    device_key: &str,
    max_coredumps: u32,
) -> Result<usize, DbError> {
    coredumps::lock_device_for_retention(tx, device_id).await?;
    let pruned = coredumps::delete_beyond(tx, device_id, i64::from(max_coredumps)).await?;
    if pruned.is_empty() {
        return Ok(0);
    }
    // Device keys are validated when devices are created, so these keys are always valid; skip
    // (and report) anything else rather than failing the upload over a cleanup.
    let keys: Vec<_> = pruned
        .iter()
        .filter_map(|id| match coredump_key(device_key, *id) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(coredump_id = id, error = %e, "coredump_retention_invalid_key");
                None
            }
        })
        .collect();
    outbox::schedule_deletion(tx, &keys).await?;
    let cancelled_parses = super::job::cancel(tx, &pruned).await?;
    tracing::info!(
        device_key,
        pruned_count = pruned.len(),
        cancelled_parses,
        "coredump_retention_pruned"
    );
    Ok(pruned.len())
}
