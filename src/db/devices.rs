//! Queries on `devices`.

use chrono::{DateTime, Utc};

use super::{now, Db, DbError, Tx};
use crate::fleet::DeviceConfig;
use crate::{on_conn, on_pool};

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
}

const SELECT: &str = "SELECT d.id, d.key, d.device_model_id, d.config, d.device_name,
        d.device_entity_id, d.enable_ota, d.active,
        (SELECT MAX(c.uploaded_at) FROM coredumps c WHERE c.device_id = d.id) AS last_coredump_at,
        d.created_at, d.updated_at
    FROM devices d";

/// What checking a device's `key.secret` credential needs (cached briefly, see
/// `crate::lookup_cache`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceCredential {
    pub id: i64,
    pub key: String,
    pub device_model_id: i64,
    /// Hex SHA-256 of the secret; `None` for a device that never had one.
    pub secret_hash: Option<String>,
}

/// The credential of the device with this key, read from the pool.
pub async fn find_credential(db: &Db, key: &str) -> Result<Option<DeviceCredential>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, DeviceCredential>(
        "SELECT id, key, device_model_id, secret_hash FROM devices WHERE key = $1"
    )
    .bind(key)
    .fetch_optional(p)
    .await)?)
}

pub const KEY_UNIQUE: (&str, &str) = ("devices_key_key", "devices.key");

pub async fn list(tx: &mut Tx, model_id: Option<i64>) -> Result<Vec<DeviceRow>, DbError> {
    let sql = format!("{SELECT} WHERE ($1 IS NULL OR d.device_model_id = $1) ORDER BY d.key");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, DeviceRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(model_id)
    .fetch_all(c)
    .await)?)
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
                              enable_ota, active, secret_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $8, $8) RETURNING id"
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

pub async fn update(
    tx: &mut Tx,
    id: i64,
    config: &DeviceConfig,
    active: bool,
) -> Result<(), DbError> {
    let now = now();
    on_conn!(tx, |c| sqlx::query(
        "UPDATE devices SET config = $1, device_name = $2, device_entity_id = $3, enable_ota = $4,
                            active = $5, updated_at = $6
         WHERE id = $7"
    )
    .bind(&config.text)
    .bind(&config.device_name)
    .bind(&config.device_entity_id)
    .bind(config.enable_ota)
    .bind(active)
    .bind(now)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn set_secret_hash(tx: &mut Tx, id: i64, secret_hash: &str) -> Result<bool, DbError> {
    let now = now();
    let rows = on_conn!(tx, |c| sqlx::query(
        "UPDATE devices SET secret_hash = $1, updated_at = $2 WHERE id = $3"
    )
    .bind(secret_hash)
    .bind(now)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(rows == 1)
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
    let rows = on_conn!(tx, |c| sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(rows == 1)
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
