//! Queries `migrate-to-s3` needs on an adopted database (SPEC §10): legacy core-dump rows by file
//! name, the record of files already moved (`legacy_coredump_files`), and of firmware versions it
//! must not create again (`legacy_firmware_bundles`, migration 25).
//!
//! `coredumps.filename` exists only on adopted PostgreSQL databases until every legacy dump is
//! moved; callers check [`super::adopt::has_filename_column`] first.

use super::{now, DbError, Tx};
use crate::on_conn;

/// A legacy dump row that still names its file.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacyDump {
    pub id: i64,
    pub size: i64,
    pub parse_status: String,
}

/// The row of `device_id` whose `filename` is `filename`, if it has not been moved yet.
pub async fn dump_by_filename(
    tx: &mut Tx,
    device_id: i64,
    filename: &str,
) -> Result<Option<LegacyDump>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, LegacyDump>(
        "SELECT id, size, parse_status FROM coredumps WHERE device_id = $1 AND filename = $2
         ORDER BY id LIMIT 1"
    )
    .bind(device_id)
    .bind(filename)
    .fetch_optional(c)
    .await)?)
}

/// The dump a file became in an earlier run, if it was moved already.
pub async fn migrated_file(
    tx: &mut Tx,
    device_id: i64,
    filename: &str,
) -> Result<Option<i64>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT coredump_id FROM legacy_coredump_files WHERE device_id = $1 AND filename = $2"
    )
    .bind(device_id)
    .bind(filename)
    .fetch_optional(c)
    .await)?)
}

/// A moved dump whose object was written again (see `crate::migrate_to_s3`): its `size` set to
/// what was uploaded. Its parse status, or `None` if the row is gone.
pub async fn restored(
    tx: &mut Tx,
    device_id: i64,
    coredump_id: i64,
    size: i64,
) -> Result<Option<String>, DbError> {
    let now = now();
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "UPDATE coredumps SET size = $1, updated_at = $2 WHERE id = $3 AND device_id = $4
         RETURNING parse_status"
    )
    .bind(size)
    .bind(now)
    .bind(coredump_id)
    .bind(device_id)
    .fetch_optional(c)
    .await)?)
}

/// Marks a legacy dump as moved: clears its `filename` (only if it still has this one), corrects
/// `size` to the file's length, and records the file (the first row that named it, when several
/// did: the Python service's table had no unique constraint on it). False when the row changed
/// meanwhile (deleted, or moved by a concurrent run): nothing is written then.
pub async fn mark_migrated(
    tx: &mut Tx,
    device_id: i64,
    coredump_id: i64,
    filename: &str,
    size: i64,
) -> Result<bool, DbError> {
    let now = now();
    let updated = crate::execute!(
        tx,
        sqlx::query(
            "UPDATE coredumps SET filename = NULL, size = $1, updated_at = $2
         WHERE id = $3 AND device_id = $4 AND filename = $5"
        )
        .bind(size)
        .bind(now)
        .bind(coredump_id)
        .bind(device_id)
        .bind(filename)
    )?;
    if updated != 1 {
        return Ok(false);
    }
    crate::execute!(
        tx,
        sqlx::query(
            "INSERT INTO legacy_coredump_files (device_id, filename, coredump_id, migrated_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (device_id, filename) DO NOTHING"
        )
        .bind(device_id)
        .bind(filename)
        .bind(coredump_id)
        .bind(now)
    )?;
    Ok(true)
}

/// Models whose current version is not a stored version (golden rule 3 broken), e.g. a model of
/// an adopted revision-005 database whose current build was a flat `firmware-{code}.bin`.
pub async fn unstored_current_versions(tx: &mut Tx) -> Result<Vec<(String, String)>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, (String, String)>(
        "SELECT m.code, m.firmware_version FROM device_models m
         WHERE m.firmware_version IS NOT NULL AND NOT EXISTS (
             SELECT 1 FROM firmware_versions f
             WHERE f.device_model_id = m.id AND f.version = m.firmware_version)
         ORDER BY m.code"
    )
    .fetch_all(c)
    .await)?)
}

/// The id of the device with this key.
pub async fn device_id_by_key(tx: &mut Tx, key: &str) -> Result<Option<i64>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM devices WHERE key = $1"
    )
    .bind(key)
    .fetch_optional(c)
    .await)?)
}

/// Up to `limit` legacy rows that still name a file, as `(device key, filename)`, and how many
/// there are in all.
pub async fn remaining_files(
    tx: &mut Tx,
    limit: i64,
) -> Result<(i64, Vec<(String, String)>), DbError> {
    let total: i64 = on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT count(*) FROM coredumps WHERE filename IS NOT NULL"
    )
    .fetch_one(c)
    .await)?;
    let sample = on_conn!(tx, |c| sqlx::query_as::<_, (String, String)>(
        "SELECT d.key, c.filename FROM coredumps c JOIN devices d ON d.id = c.device_id
         WHERE c.filename IS NOT NULL ORDER BY d.key, c.filename LIMIT $1"
    )
    .bind(limit)
    .fetch_all(c)
    .await)?;
    Ok((total, sample))
}

/// Whether `migrate-to-s3` has moved any file before.
pub async fn any_migrated_file(tx: &mut Tx) -> Result<bool, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM legacy_coredump_files)"
    )
    .fetch_one(c)
    .await)?)
}

/// Whether `version` of the model is recorded as stored by `migrate-to-s3` (or held by this
/// database when the record began): a rerun that finds it without a row must not create it again.
pub async fn firmware_bundle_recorded(
    tx: &mut Tx,
    model_id: i64,
    version: &str,
) -> Result<bool, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM legacy_firmware_bundles
                        WHERE device_model_id = $1 AND version = $2)"
    )
    .bind(model_id)
    .bind(version)
    .fetch_one(c)
    .await)?)
}

/// Records that `migrate-to-s3` stored `version` of the model (once).
pub async fn record_firmware_bundle(
    tx: &mut Tx,
    model_id: i64,
    version: &str,
) -> Result<(), DbError> {
    let now = now();
    crate::execute!(
        tx,
        sqlx::query(
            "INSERT INTO legacy_firmware_bundles (device_model_id, version, migrated_at)
             VALUES ($1, $2, $3) ON CONFLICT (device_model_id, version) DO NOTHING"
        )
        .bind(model_id)
        .bind(version)
        .bind(now)
    )?;
    Ok(())
}
