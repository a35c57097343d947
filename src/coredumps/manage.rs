//! What admins do with stored dumps: delete one, delete all of a device's, parse one again. Rows go
//! in one transaction with their outbox entries (golden rule 2) and their event; a reparse clears
//! the result and queues the job in the same transaction. Deletions take the device's dump lock
//! first (`db::coredumps::lock_device_dumps`), as uploads do.

use crate::db::coredumps::{self, CoredumpRow};
use crate::db::{Db, DbError, Tx};
use crate::layout::coredump_key;
use crate::storage::InvalidKey;
use crate::{events, outbox};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("Device {0} was not found")]
    DeviceNotFound(i64),
    #[error("Coredump {0} was not found")]
    CoredumpNotFound(i64),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Key(#[from] InvalidKey),
}

/// The device's key, or [`ManageError::DeviceNotFound`].
pub async fn device_key(tx: &mut Tx, device_id: i64) -> Result<String, ManageError> {
    coredumps::device_key(tx, device_id)
        .await?
        .ok_or(ManageError::DeviceNotFound(device_id))
}

/// Dump `id` of device `device_id` (the device must exist and own it).
pub async fn load(
    tx: &mut Tx,
    device_id: i64,
    id: i64,
) -> Result<(String, CoredumpRow), ManageError> {
    let key = device_key(tx, device_id).await?;
    let row = coredumps::get(tx, device_id, id)
        .await?
        .ok_or(ManageError::CoredumpNotFound(id))?;
    Ok((key, row))
}

async fn deleted(tx: &mut Tx, device_id: i64, key: &str, ids: &[i64]) -> Result<(), ManageError> {
    let keys = ids
        .iter()
        .map(|id| coredump_key(key, *id))
        .collect::<Result<Vec<_>, _>>()?;
    outbox::schedule_deletion(tx, &keys).await?;
    if !ids.is_empty() {
        events::record(
            tx,
            "coredump_deleted",
            &serde_json::json!({"ids": ids, "device_id": device_id}),
        )
        .await?;
    }
    Ok(())
}

/// Deletes one dump; its object goes through the outbox.
pub async fn delete(db: &Db, device_id: i64, id: i64) -> Result<(), ManageError> {
    let mut tx = db.begin().await?;
    coredumps::lock_device_dumps(&mut tx, device_id).await?;
    let key = device_key(&mut tx, device_id).await?;
    if !coredumps::delete(&mut tx, device_id, id).await? {
        return Err(ManageError::CoredumpNotFound(id));
    }
    deleted(&mut tx, device_id, &key, &[id]).await?;
    tx.commit().await?;
    tracing::info!(device_key = %key, coredump_id = id, "coredump_deleted");
    Ok(())
}

/// Deletes every dump of a device; returns how many.
pub async fn delete_all(db: &Db, device_id: i64) -> Result<usize, ManageError> {
    let mut tx = db.begin().await?;
    coredumps::lock_device_dumps(&mut tx, device_id).await?;
    let key = device_key(&mut tx, device_id).await?;
    let ids = coredumps::delete_all(&mut tx, device_id).await?;
    deleted(&mut tx, device_id, &key, &ids).await?;
    tx.commit().await?;
    tracing::info!(device_key = %key, count = ids.len(), "coredumps_deleted");
    Ok(ids.len())
}

/// Makes a dump `PENDING` again (result cleared) and queues its parse; returns it as it is now.
pub async fn reparse(db: &Db, device_id: i64, id: i64) -> Result<CoredumpRow, ManageError> {
    let mut tx = db.begin().await?;
    let key = device_key(&mut tx, device_id).await?;
    if !super::job::requeue(&mut tx, device_id, id).await? {
        return Err(ManageError::CoredumpNotFound(id));
    }
    let (_, row) = load(&mut tx, device_id, id).await?;
    tx.commit().await?;
    tracing::info!(device_key = %key, coredump_id = id, "coredump_reparse_queued");
    Ok(row)
}
