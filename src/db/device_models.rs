//! Queries on `device_models`.

use chrono::{DateTime, Utc};

use super::{now, DbError, Tx};
use crate::on_conn;

/// A model row with its device count.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceModelRow {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub firmware_version: Option<String>,
    pub config_schema: Option<String>,
    pub device_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT m.id, m.code, m.name, m.firmware_version, m.config_schema,
        (SELECT COUNT(*) FROM devices d WHERE d.device_model_id = m.id) AS device_count,
        m.created_at, m.updated_at
    FROM device_models m";

pub const CODE_UNIQUE: (&str, &str) = ("device_models_code_key", "device_models.code");

pub async fn list(tx: &mut Tx) -> Result<Vec<DeviceModelRow>, DbError> {
    // By bytes on both databases: PostgreSQL's default collation follows the server's locale,
    // which orders `_` against digits differently from SQLite (and from one glibc to the next).
    let order = match tx {
        Tx::Postgres(_) => "m.code COLLATE \"C\"",
        Tx::Sqlite(_) => "m.code",
    };
    let sql = format!("{SELECT} ORDER BY {order}");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, DeviceModelRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .fetch_all(c)
    .await)?)
}

pub async fn get(tx: &mut Tx, id: i64) -> Result<Option<DeviceModelRow>, DbError> {
    let sql = format!("{SELECT} WHERE m.id = $1");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, DeviceModelRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .fetch_optional(c)
    .await)?)
}

/// The advisory-lock class of [`lock_schema`] (PostgreSQL's two-key advisory locks: class, id).
const SCHEMA_LOCK_CLASS: i32 = 0x5343; // "SC"

/// The lock between a model's config schema and the device configs validated against it: a
/// schema change takes it exclusively, a device write that stores a validated config shared, so
/// neither commits in the middle of the other (the device write re-reads the schema after taking
/// it; under READ COMMITTED a plain re-read could miss a change committing a moment later). Not
/// the model row's lock, which firmware uploads hold for the whole upload. PostgreSQL only:
/// SQLite serialises writers.
pub async fn lock_schema(tx: &mut Tx, model_id: i64, exclusive: bool) -> Result<(), DbError> {
    if let Tx::Postgres(t) = tx {
        let sql = if exclusive {
            "SELECT pg_advisory_xact_lock($1, $2)"
        } else {
            "SELECT pg_advisory_xact_lock_shared($1, $2)"
        };
        // Ids beyond 2^31 share a lock with another model: more waiting, never less safety.
        let key = (model_id & 0x7fff_ffff) as i32;
        sqlx::query(sql)
            .bind(SCHEMA_LOCK_CLASS)
            .bind(key)
            .execute(&mut **t)
            .await?;
    }
    Ok(())
}

/// Whether the model exists (without counting its devices, as [`get`] does).
pub async fn exists(tx: &mut Tx, id: i64) -> Result<bool, DbError> {
    let found: Option<i64> = on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM device_models WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(c)
    .await)?;
    Ok(found.is_some())
}

pub async fn get_by_code(tx: &mut Tx, code: &str) -> Result<Option<DeviceModelRow>, DbError> {
    let sql = format!("{SELECT} WHERE m.code = $1");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, DeviceModelRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(code)
    .fetch_optional(c)
    .await)?)
}

/// Inserts a model; a duplicate code is a `UniqueViolation` on [`CODE_UNIQUE`].
pub async fn insert(
    tx: &mut Tx,
    code: &str,
    name: &str,
    config_schema: Option<&str>,
) -> Result<i64, DbError> {
    let now = now();
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "INSERT INTO device_models (code, name, config_schema, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4) RETURNING id"
    )
    .bind(code)
    .bind(name)
    .bind(config_schema)
    .bind(now)
    .fetch_one(c)
    .await)?)
}

/// Changes what is given: the name when `name` is `Some`, the schema when `config_schema` is
/// `Some` (`Some(None)` removes it). What is not given is left as the row has it when the update
/// runs, not as it was read earlier: a rename must not undo a schema change committed meanwhile.
pub async fn update(
    tx: &mut Tx,
    id: i64,
    name: Option<&str>,
    config_schema: Option<Option<&str>>,
) -> Result<(), DbError> {
    let now = now();
    match config_schema {
        Some(schema) => crate::execute!(
            tx,
            sqlx::query(
                "UPDATE device_models SET name = COALESCE($1, name), config_schema = $2,
                        updated_at = $3 WHERE id = $4"
            )
            .bind(name)
            .bind(schema)
            .bind(now)
            .bind(id)
        )?,
        None => crate::execute!(
            tx,
            sqlx::query(
                "UPDATE device_models SET name = COALESCE($1, name), updated_at = $2 WHERE id = $3"
            )
            .bind(name)
            .bind(now)
            .bind(id)
        )?,
    };
    Ok(())
}

/// The versions stored for a model (their objects must go when the model goes).
pub async fn firmware_versions(tx: &mut Tx, id: i64) -> Result<Vec<String>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT version FROM firmware_versions WHERE device_model_id = $1 ORDER BY version"
    )
    .bind(id)
    .fetch_all(c)
    .await)?)
}

/// Deletes a model and (by cascade) its firmware rows. Devices block it: `ForeignKeyViolation`.
pub async fn delete(tx: &mut Tx, id: i64) -> Result<bool, DbError> {
    let rows = crate::execute!(
        tx,
        sqlx::query("DELETE FROM device_models WHERE id = $1").bind(id)
    )?;
    Ok(rows == 1)
}
