//! Queries on device secrets (current and pending) and the token signing keys.

use super::firmware_versions::{CurrentImage, CURRENT_IMAGE_COLUMNS, CURRENT_IMAGE_JOIN};
use super::{now, Db, DbError, Tx};
use crate::{on_conn, on_pool};

/// What checking a device's credential needs (cached briefly, see `crate::lookup_cache`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceCredential {
    pub id: i64,
    pub key: String,
    pub device_model_id: i64,
    pub model_code: String,
    /// Hex SHA-256 of the current secret; `None` for a device that never had one (adopted).
    pub secret_hash: Option<String>,
    /// Hex SHA-256 of the pending secret, if a provisioning package minted one.
    pub pending_secret_hash: Option<String>,
    /// Hex SHA-256 of the pending secret an admin's provisioning package replaced (see
    /// [`set_pending_secret_if`]): still valid, as pending, until either pending secret is used.
    pub superseded_secret_hash: Option<String>,
}

/// The columns of [`DeviceCredential`] from [`CREDENTIAL_FROM`].
const CREDENTIAL_COLUMNS: &str = "d.id, d.key, d.device_model_id, m.code AS model_code,
    d.secret_hash, d.pending_secret_hash, d.superseded_secret_hash";
const CREDENTIAL_FROM: &str = "FROM devices d JOIN device_models m ON m.id = d.device_model_id";

/// The credential of the device with this key, read from the pool.
pub async fn find_credential(db: &Db, key: &str) -> Result<Option<DeviceCredential>, DbError> {
    let sql = format!("SELECT {CREDENTIAL_COLUMNS} {CREDENTIAL_FROM} WHERE d.key = $1");
    Ok(on_pool!(db, |p| sqlx::query_as::<_, DeviceCredential>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(key)
    .fetch_optional(p)
    .await)?)
}

/// [`find_credential`] and the current image of the device's model, in one query (the OTA
/// routes need both: one round trip, and one connection taken from the pool, instead of two).
pub async fn find_credential_with_image(
    db: &Db,
    key: &str,
) -> Result<Option<(DeviceCredential, CurrentImage)>, DbError> {
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS}, {CURRENT_IMAGE_COLUMNS} {CREDENTIAL_FROM} {CURRENT_IMAGE_JOIN}
         WHERE d.key = $1"
    );
    let found: Option<CredentialWithImage> =
        on_pool!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(key)
            .fetch_optional(p)
            .await)?;
    Ok(found.map(|r| (r.credential, r.image)))
}

#[derive(sqlx::FromRow)]
struct CredentialWithImage {
    #[sqlx(flatten)]
    credential: DeviceCredential,
    #[sqlx(flatten)]
    image: CurrentImage,
}

/// Stores a new pending secret (replacing any earlier one); the current one stays valid.
pub async fn set_pending_secret(tx: &mut Tx, id: i64, hash: &str) -> Result<bool, DbError> {
    set_pending_secret_if(tx, id, hash, None).await
}

/// As [`set_pending_secret`], and with `proved` only while that secret hash is still the
/// device's current or pending one. False when there is no such device, or it was replaced.
///
/// Without `proved` (an admin's package, or a caller that proved no secret of ours) the pending
/// secret it replaces stays valid as the superseded one: a device in the middle of a rotation
/// may have stored it already, and the package may never be flashed. With `proved`, the caller
/// holds its current secret (a device that stored a pending one authenticates with that, which
/// promotes it first), so no earlier pending secret is kept.
pub async fn set_pending_secret_if(
    tx: &mut Tx,
    id: i64,
    hash: &str,
    proved: Option<&str>,
) -> Result<bool, DbError> {
    let now = now();
    let rows = on_conn!(tx, |c| {
        sqlx::query(
            "UPDATE devices SET pending_secret_hash = $1, pending_secret_created_at = $2,
                superseded_secret_hash = CASE WHEN $4 IS NULL
                    THEN COALESCE(pending_secret_hash, superseded_secret_hash) END
             WHERE id = $3
               AND ($4 IS NULL OR secret_hash = $4 OR pending_secret_hash = $4)",
        )
        .bind(hash)
        .bind(now)
        .bind(id)
        .bind(proved)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(rows == 1)
}

/// The device's rotation state, locked for the rest of the transaction (PostgreSQL).
pub async fn lock_rotation_state(tx: &mut Tx, id: i64) -> Result<Option<String>, DbError> {
    Ok(match tx {
        Tx::Postgres(t) => {
            sqlx::query_scalar("SELECT rotation_state FROM devices WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut **t)
                .await?
        }
        Tx::Sqlite(t) => {
            sqlx::query_scalar("SELECT rotation_state FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut **t)
                .await?
        }
    })
}

/// Makes the pending secret `pending_hash` the current one, if it still is the pending (or the
/// superseded pending) one; the other pending secret, if any, is dropped.
/// `completes_rotation`: also end the rotation (`OK`, `last_rotation_completed_at`).
pub async fn promote_pending(
    tx: &mut Tx,
    id: i64,
    pending_hash: &str,
    completes_rotation: bool,
) -> Result<bool, DbError> {
    let now = now();
    let rows = crate::execute!(
        tx,
        sqlx::query(
            "UPDATE devices SET secret_hash = $4,
                secret_created_at = CASE WHEN pending_secret_hash = $4
                    THEN COALESCE(pending_secret_created_at, $1) ELSE $1 END,
                pending_secret_hash = NULL, pending_secret_created_at = NULL,
                superseded_secret_hash = NULL,
                rotation_state = CASE WHEN $2 THEN 'OK' ELSE rotation_state END,
                last_rotation_completed_at =
                    CASE WHEN $2 THEN $1 ELSE last_rotation_completed_at END,
                rotation_timed_out_at = CASE WHEN $2 THEN NULL ELSE rotation_timed_out_at END
         WHERE id = $3 AND (pending_secret_hash = $4 OR superseded_secret_hash = $4)"
        )
        .bind(now)
        .bind(completes_rotation)
        .bind(id)
        .bind(pending_hash)
    )?;
    Ok(rows == 1)
}

/// The admin override: a new current secret, no pending one, and any rotation ended as done.
pub async fn replace_secret(tx: &mut Tx, id: i64, hash: &str) -> Result<bool, DbError> {
    let now = now();
    let rows = crate::execute!(
        tx,
        sqlx::query(
            "UPDATE devices SET secret_hash = $1, secret_created_at = $2,
                pending_secret_hash = NULL, pending_secret_created_at = NULL,
                superseded_secret_hash = NULL,
                last_rotation_completed_at =
                    CASE WHEN rotation_state = 'OK' THEN last_rotation_completed_at ELSE $2 END,
                rotation_state = 'OK', rotation_timed_out_at = NULL, updated_at = $2
         WHERE id = $3"
        )
        .bind(hash)
        .bind(now)
        .bind(id)
    )?;
    Ok(rows == 1)
}

/// A stored signing key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSigningKey {
    pub kid: String,
    pub private_key: String,
}

/// Every stored signing key, newest first.
pub async fn signing_keys(db: &Db) -> Result<Vec<StoredSigningKey>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, StoredSigningKey>(
        "SELECT kid, private_key FROM signing_keys ORDER BY created_at DESC, kid"
    )
    .fetch_all(p)
    .await)?)
}

/// Arbitrary but fixed: the advisory lock taken while the first signing key is created.
const SIGNING_KEY_LOCK: i64 = 0x0069_6f74_6b65_7901;

/// Stores this key unless one exists already (checked under a lock, so concurrent first starts
/// agree); returns the private key that is in force.
pub async fn insert_signing_key_once(
    db: &Db,
    kid: &str,
    private_key: &str,
    public_jwk: &str,
) -> Result<String, DbError> {
    let mut tx = db.begin().await?;
    if let Tx::Postgres(t) = &mut tx {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SIGNING_KEY_LOCK)
            .execute(&mut **t)
            .await?;
    }
    let existing: Option<String> = on_conn!(&mut tx, |c| sqlx::query_scalar(
        "SELECT private_key FROM signing_keys ORDER BY created_at DESC, kid LIMIT 1"
    )
    .fetch_optional(c)
    .await)?;
    if let Some(existing) = existing {
        tx.commit().await?;
        return Ok(existing);
    }
    let now = now();
    crate::execute!(
        &mut tx,
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_key, public_jwk, created_at)
         VALUES ($1, 'ES256', $2, $3, $4)"
        )
        .bind(kid)
        .bind(private_key)
        .bind(public_jwk)
        .bind(now)
    )?;
    tx.commit().await?;
    Ok(private_key.to_string())
}

/// A device's key and model code (what its client id is made of).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceIdentity {
    pub id: i64,
    pub key: String,
    pub model_code: String,
}

pub async fn identity(tx: &mut Tx, id: i64) -> Result<Option<DeviceIdentity>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, DeviceIdentity>(
        "SELECT d.id, d.key, m.code AS model_code
         FROM devices d JOIN device_models m ON m.id = d.device_model_id WHERE d.id = $1"
    )
    .bind(id)
    .fetch_optional(c)
    .await)?)
}
