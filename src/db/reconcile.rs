//! The queries of `crate::reconcile`: re-checks made inside the repair transaction, so a repair
//! never acts on a scan that went stale.

use super::{Db, DbError, Tx};
use crate::{on_conn, on_pool};

#[derive(sqlx::FromRow)]
pub struct FirmwareRow {
    pub code: String,
    pub version: String,
    /// The model's current version.
    pub current: Option<String>,
}

#[derive(sqlx::FromRow)]
pub struct CoredumpRow {
    pub id: i64,
    pub key: String,
    /// The row still names a file of the Python service's `COREDUMPS_DIR` (adopted database,
    /// `migrate-to-s3` not run yet): its object is not expected in the bucket yet.
    pub legacy: bool,
}

#[derive(sqlx::FromRow)]
pub struct ModelRow {
    pub code: String,
    pub firmware_version: Option<String>,
}

/// Everything a scan compares the bucket with.
pub struct ScanRows {
    pub firmware: Vec<FirmwareRow>,
    pub dumps: Vec<CoredumpRow>,
    pub models: Vec<ModelRow>,
    /// Keys already queued in the outbox (on their way out: not orphans).
    pub queued_deletions: Vec<String>,
}

pub async fn scan_rows(db: &Db) -> Result<ScanRows, DbError> {
    let firmware: Vec<FirmwareRow> = on_pool!(db, |p| sqlx::query_as::<_, FirmwareRow>(
        "SELECT m.code, f.version, m.firmware_version AS current
         FROM firmware_versions f JOIN device_models m ON m.id = f.device_model_id"
    )
    .fetch_all(p)
    .await)?;
    let legacy_column = super::adopt::has_filename_column(db).await?;
    let dumps_sql = if legacy_column {
        "SELECT c.id, d.key, c.filename IS NOT NULL AS legacy
         FROM coredumps c JOIN devices d ON d.id = c.device_id"
    } else {
        "SELECT c.id, d.key, FALSE AS legacy FROM coredumps c JOIN devices d ON d.id = c.device_id"
    };
    let dumps: Vec<CoredumpRow> = on_pool!(db, |p| sqlx::query_as::<_, CoredumpRow>(dumps_sql)
        .fetch_all(p)
        .await)?;
    let models: Vec<ModelRow> = on_pool!(db, |p| sqlx::query_as::<_, ModelRow>(
        "SELECT code, firmware_version FROM device_models ORDER BY code"
    )
    .fetch_all(p)
    .await)?;
    let queued_deletions: Vec<String> = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT object_key FROM object_deletions"
    )
    .fetch_all(p)
    .await)?;
    Ok(ScanRows {
        firmware,
        dumps,
        models,
        queued_deletions,
    })
}

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

/// Whether dump `id` exists and belongs to the device with key `device_key`: only then does it
/// claim `coredumps/{device_key}/{id}.dmp` (SQLite may hand a rolled-back id out again, to
/// another device).
pub async fn coredump_exists(tx: &mut Tx, id: i64, device_key: &str) -> Result<bool, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM coredumps c JOIN devices d ON d.id = c.device_id
                        WHERE c.id = $1 AND d.key = $2)"
    )
    .bind(id)
    .bind(device_key)
    .fetch_one(c)
    .await)?)
}

/// What [`mark_coredump_missing`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkedMissing {
    /// Now `ERROR`, saying the object is missing.
    Marked,
    /// Said so already, or the row is gone.
    Unchanged,
    /// `PARSED`: its report is all that is left of that crash (the dump cannot be parsed again),
    /// so it is kept as it is.
    ParsedKept,
}

/// Marks a dump whose object is gone `ERROR` with `message` (its structured report cleared, as
/// after any failed parse), unless it is `PARSED`.
pub async fn mark_coredump_missing(
    tx: &mut Tx,
    id: i64,
    message: &str,
) -> Result<MarkedMissing, DbError> {
    let status: Option<String> = on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT parse_status FROM coredumps WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(c)
    .await)?;
    // The update's own condition decides (a parse may finish in between); this only tells
    // the two outcomes apart.
    if status.as_deref() == Some(super::coredumps::STATUS_PARSED) {
        return Ok(MarkedMissing::ParsedKept);
    }
    let now = super::now();
    let changed = crate::execute!(
        tx,
        sqlx::query(
            "UPDATE coredumps SET parse_status = 'ERROR', parsed_output = $1, report = NULL,
             parsed_at = $2, updated_at = $2
         WHERE id = $3 AND parse_status <> 'PARSED'
           AND NOT (parse_status = 'ERROR' AND parsed_output = $1)"
        )
        .bind(message)
        .bind(now)
        .bind(id)
    )?;
    Ok(if changed == 1 {
        MarkedMissing::Marked
    } else {
        MarkedMissing::Unchanged
    })
}

/// Deletes the version row unless it is its model's current version; returns whether it did.
pub async fn delete_version_unless_current(
    tx: &mut Tx,
    model_code: &str,
    version: &str,
) -> Result<bool, DbError> {
    let removed = crate::execute!(
        tx,
        sqlx::query(
            "DELETE FROM firmware_versions WHERE version = $1 AND device_model_id =
            (SELECT id FROM device_models WHERE code = $2
             AND (firmware_version IS NULL OR firmware_version <> $1))"
        )
        .bind(version)
        .bind(model_code)
    )?;
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

/// PostgreSQL: blocks inserts into `device_models` until the transaction ends. SQLite: the write
/// transaction already excludes every other writer.
pub async fn lock_model_creation(tx: &mut Tx) -> Result<(), DbError> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("LOCK TABLE device_models IN SHARE MODE")
            .execute(&mut **t)
            .await?;
    }
    Ok(())
}
