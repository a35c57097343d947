//! Queries on `devices`.

use chrono::{DateTime, Utc};

use super::{now, DbError, Tx};
use crate::fleet::DeviceConfig;
use crate::on_conn;

/// A device row with what list and detail views show.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceRow {
    pub id: i64,
    pub key: String,
    pub device_model_id: i64,
    pub config: String,
    pub device_name: Option<String>,
    pub device_entity_id: Option<String>,
    pub enable_ota: Option<bool>,
    pub active: bool,
    pub last_coredump_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub model_code: String,
    pub rotation_state: String,
    pub secret_created_at: Option<DateTime<Utc>>,
    pub last_rotation_attempt_at: Option<DateTime<Utc>>,
    pub last_rotation_completed_at: Option<DateTime<Utc>>,
    /// What the device last said it runs (SPEC §15).
    pub running_firmware_version: Option<String>,
    /// When the device was last heard from (written at most about once a minute).
    pub last_seen_at: Option<DateTime<Utc>>,
}

const SELECT: &str = "SELECT d.id, d.key, d.device_model_id, d.config, d.device_name,
        d.device_entity_id, d.enable_ota, d.active,
        (SELECT MAX(c.uploaded_at) FROM coredumps c WHERE c.device_id = d.id) AS last_coredump_at,
        d.created_at, d.updated_at, m.code AS model_code, d.rotation_state, d.secret_created_at,
        d.last_rotation_attempt_at, d.last_rotation_completed_at, d.running_firmware_version,
        d.last_seen_at
    FROM devices d JOIN device_models m ON m.id = d.device_model_id";

pub const KEY_UNIQUE: (&str, &str) = ("devices_key_key", "devices.key");

/// Devices ordered by key, optionally of one model and one rotation state; with `limit`, at most
/// that many after the key `after` (the caller asks for one more than it shows, to know whether
/// a next page exists).
pub async fn list(
    tx: &mut Tx,
    model_id: Option<i64>,
    rotation_state: Option<&str>,
    after: Option<&str>,
    limit: Option<u32>,
) -> Result<Vec<DeviceRow>, DbError> {
    // Only the filters given become conditions: a prepared `$1 IS NULL OR …` would let
    // PostgreSQL settle on a generic plan that cannot use the (model, key) index.
    let mut conditions = Vec::new();
    let mut next = 0;
    let mut placeholder = || {
        next += 1;
        format!("${next}")
    };
    if model_id.is_some() {
        conditions.push(format!("d.device_model_id = {}", placeholder()));
    }
    if rotation_state.is_some() {
        conditions.push(format!("d.rotation_state = {}", placeholder()));
    }
    if after.is_some() {
        conditions.push(format!("d.key > {}", placeholder()));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let sql = format!("{SELECT}{filter} ORDER BY d.key{limit}");
    Ok(on_conn!(tx, |c| {
        let mut query = sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(sql.clone()));
        if let Some(model_id) = model_id {
            query = query.bind(model_id);
        }
        if let Some(state) = rotation_state {
            query = query.bind(state);
        }
        if let Some(after) = after {
            query = query.bind(after);
        }
        query.fetch_all(c).await
    })?)
}

pub async fn get(tx: &mut Tx, id: i64) -> Result<Option<DeviceRow>, DbError> {
    let sql = format!("{SELECT} WHERE d.id = $1");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, DeviceRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .fetch_optional(c)
    .await)?)
}

/// Inserts a device; a key collision is a `UniqueViolation` on [`KEY_UNIQUE`].
pub async fn insert(
    tx: &mut Tx,
    key: &str,
    model_id: i64,
    config: &DeviceConfig,
    secret_hash: &str,
) -> Result<i64, DbError> {
    let now = now();
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "INSERT INTO devices (key, device_model_id, config, device_name, device_entity_id,
                              enable_ota, active, secret_hash, secret_created_at, created_at,
                              updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $8, $8, $8) RETURNING id"
    )
    .bind(key)
    .bind(model_id)
    .bind(&config.text)
    .bind(&config.device_name)
    .bind(&config.device_entity_id)
    .bind(config.enable_ota)
    .bind(secret_hash)
    .bind(now)
    .fetch_one(c)
    .await)?)
}

/// Replaces what is given of a device's config and active flag; what is not given stays as it is
/// in the row (not as a caller read it: two partial updates at once must not undo each other).
pub async fn update(
    tx: &mut Tx,
    id: i64,
    config: Option<&DeviceConfig>,
    active: Option<bool>,
) -> Result<(), DbError> {
    let now = now();
    match config {
        Some(config) => crate::execute!(
            tx,
            sqlx::query(
                "UPDATE devices SET config = $1, device_name = $2, device_entity_id = $3,
                                enable_ota = $4, active = COALESCE($5, active), updated_at = $6
             WHERE id = $7"
            )
            .bind(&config.text)
            .bind(&config.device_name)
            .bind(&config.device_entity_id)
            .bind(config.enable_ota)
            .bind(active)
            .bind(now)
            .bind(id)
        )?,
        None => {
            crate::execute!(tx, sqlx::query(
            "UPDATE devices SET active = COALESCE($1, active), updated_at = $2 WHERE id = $3"
        )
        .bind(active)
        .bind(now)
        .bind(id))?
        }
    };
    Ok(())
}

/// The ids of a device's core dumps (their objects must go when the device goes).
pub async fn coredump_ids(tx: &mut Tx, id: i64) -> Result<Vec<i64>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM coredumps WHERE device_id = $1 ORDER BY id"
    )
    .bind(id)
    .fetch_all(c)
    .await)?)
}

/// Deletes a device and (by cascade) its core dump rows.
pub async fn delete(tx: &mut Tx, id: i64) -> Result<bool, DbError> {
    let rows = crate::execute!(
        tx,
        sqlx::query("DELETE FROM devices WHERE id = $1").bind(id)
    )?;
    Ok(rows == 1)
}

/// Records that the device was heard from at `at`, running `version` if it said so (see
/// `crate::presence`). The newest observation wins: an older one written late changes nothing,
/// and an observation without a version keeps the version known. Versions are compared among
/// version reports (`running_firmware_version_at`), so one flushed after another process wrote a
/// newer `last_seen_at` from a request without a version still lands.
pub async fn record_presence(
    db: &super::Db,
    id: i64,
    at: DateTime<Utc>,
    version: Option<&str>,
) -> Result<(), DbError> {
    crate::on_pool!(db, |p| sqlx::query(
        "UPDATE devices SET
             running_firmware_version = CASE
                 WHEN $2 IS NOT NULL
                      AND (running_firmware_version_at IS NULL OR running_firmware_version_at <= $3)
                 THEN $2 ELSE running_firmware_version END,
             running_firmware_version_at = CASE
                 WHEN $2 IS NOT NULL
                      AND (running_firmware_version_at IS NULL OR running_firmware_version_at <= $3)
                 THEN $3 ELSE running_firmware_version_at END,
             last_seen_at = CASE
                 WHEN last_seen_at IS NULL OR last_seen_at < $3 THEN $3
                 ELSE last_seen_at END
         WHERE id = $1"
    )
    .bind(id)
    .bind(version)
    .bind(at)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// The raw config text of one device (for `GET /api/iot/config`).
pub async fn config_text(tx: &mut Tx, id: i64) -> Result<Option<String>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT config FROM devices WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(c)
    .await)?)
}
