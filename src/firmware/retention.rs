//! Firmware retention (SPEC §7): after an upload keep the newest `MAX_FIRMWARES` versions of the
//! model by `uploaded_at`, never the current version, and never a version that a `PENDING` core
//! dump of a device *of this model* reports (its ELF is still needed to parse the dump).
//!
//! Runs inside the upload's transaction (after the model row is locked): the rows go with that
//! transaction and the objects through the outbox, so a failed upload prunes nothing.

use crate::db::{firmware_versions as fw, DbError, Tx};
use crate::outbox;
use crate::storage::{InvalidKey, ObjectKey};

/// What one retention pass did (or will have done once the transaction commits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub versions: Vec<String>,
    /// Versions beyond the newest `keep` that were kept because a PENDING core dump needs them.
    pub skipped_pending: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Key(#[from] InvalidKey),
}

/// The versions that retention would prune after an upload that made `current` the model's
/// current version: those beyond the newest `keep`, except `current`. A read only: the model row
/// must be locked by the caller, so nothing changes the list before [`enforce`].
pub async fn candidates(
    tx: &mut Tx,
    model_id: i64,
    current: &str,
    keep: u32,
) -> Result<Vec<String>, DbError> {
    let versions = fw::versions_newest_first(tx, model_id).await?;
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    Ok(versions
        .into_iter()
        .skip(keep)
        .filter(|version| version != current)
        .collect())
}

/// Prunes `candidates` (from [`candidates`], in the same transaction), sparing the versions that
/// pending core dumps report: the lock and the read of what pending dumps need when there are
/// candidates (none otherwise), then the delete and the outbox entries when any is pruned.
pub async fn enforce(
    tx: &mut Tx,
    model_id: i64,
    model_code: &str,
    candidates: Vec<String>,
) -> Result<Pruned, RetentionError> {
    if candidates.is_empty() {
        return Ok(Pruned::default());
    }
    // A dump uploaded right now for a candidate counts: the lock waits for it to commit.
    fw::lock_for_deletion(tx, model_id, &candidates).await?;
    let pending = fw::pending_coredump_versions(tx, model_id).await?;
    let mut pruned = Pruned::default();
    for version in candidates {
        if pending.contains(&version) {
            pruned.skipped_pending += 1;
            continue;
        }
        pruned.versions.push(version);
    }
    fw::delete_many(tx, model_id, &pruned.versions).await?;
    // After the rows are gone: a literal `%` version pruned in the same pass leaves no owner to
    // spare its keys for.
    let mut keys: Vec<ObjectKey> = Vec::new();
    for version in &pruned.versions {
        let spare = fw::encoding_is_a_version(tx, model_id, version).await?;
        // A legacy version whose keys cannot even be written: nothing to delete.
        match crate::layout::deletable_keys(model_code, version, spare) {
            Ok(version_keys) => keys.extend(version_keys),
            Err(e) => {
                tracing::warn!(model_code, version = %version, error = %e, "firmware_retention_unsafe_key")
            }
        }
    }
    outbox::schedule_deletion(tx, &keys).await?;
    Ok(pruned)
}
