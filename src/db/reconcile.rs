//! The queries of `crate::reconcile`: re-checks made inside the repair transaction, so a repair
//! never acts on a scan that went stale.

use super::{DbError, Tx};
use crate::on_conn;

/// Whether a firmware version row `(model_code, version)` exists.
pub async fn firmware_version_exists(
    tx: &mut Tx,
    model_code: &str,
    version: &str,
) -> Result<bool, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM firmware_versions f JOIN device_models m
             ON m.id = f.device_model_id WHERE m.code = $1 AND f.version = $2)"
    )
    .bind(model_code)
    .bind(version)
    .fetch_one(c)
    .await)?)
}

/// Whether core dump `id` exists.
pub async fn coredump_exists(tx: &mut Tx, id: i64) -> Result<bool, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM coredumps WHERE id = $1)"
    )
    .bind(id)
    .fetch_one(c)
    .await)?)
}

/// Marks a dump whose object is gone `ERROR` with `message`; returns whether a row changed.
pub async fn mark_coredump_missing(tx: &mut Tx, id: i64, message: &str) -> Result<bool, DbError> {
    let now = super::now();
    let changed = on_conn!(tx, |c| sqlx::query(
        "UPDATE coredumps SET parse_status = 'ERROR', parsed_output = $1, parsed_at = $2,
             updated_at = $2
         WHERE id = $3 AND NOT (parse_status = 'ERROR' AND parsed_output = $1)"
    )
    .bind(message)
    .bind(now)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(changed == 1)
}

/// Deletes the version row unless it is its model's current version; returns whether it did.
pub async fn delete_version_unless_current(
    tx: &mut Tx,
    model_code: &str,
    version: &str,
) -> Result<bool, DbError> {
    let removed = on_conn!(tx, |c| sqlx::query(
        "DELETE FROM firmware_versions WHERE version = $1 AND device_model_id =
            (SELECT id FROM device_models WHERE code = $2
             AND (firmware_version IS NULL OR firmware_version <> $1))"
    )
    .bind(version)
    .bind(model_code)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(removed == 1)
}

/// The id of model `code`, locked for the rest of the transaction like every firmware change
/// locks it (`firmware_versions::lock_model`).
pub async fn lock_model_by_code(tx: &mut Tx, code: &str) -> Result<Option<i64>, DbError> {
    let id: Option<i64> = on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM device_models WHERE code = $1"
    )
    .bind(code)
    .fetch_optional(c)
    .await)?;
    match id {
        Some(id) => Ok(super::firmware_versions::lock_model(tx, id)
            .await?
            .map(|m| m.id)),
        None => Ok(None),
    }
}

/// Every firmware version as `(model_code, version)`.
pub async fn all_firmware_versions(tx: &mut Tx) -> Result<Vec<(String, String)>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, (String, String)>(
        "SELECT m.code, f.version FROM firmware_versions f
         JOIN device_models m ON m.id = f.device_model_id ORDER BY m.code, f.version"
    )
    .fetch_all(c)
    .await)?)
}
