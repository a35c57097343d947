//! Queries of the notification queue (`notifications`, see `crate::notify`).

use chrono::{DateTime, Utc};

use super::{Db, DbError, Tx};
use crate::on_pool;

/// A queued notification taken by a publisher.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedNotification {
    pub id: i64,
    pub kind: String,
    pub client_id: String,
    pub firmware_version: Option<String>,
    pub attempts: i32,
}

/// Queues one notification.
pub async fn enqueue(
    tx: &mut Tx,
    kind: &str,
    client_id: &str,
    firmware_version: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    crate::execute!(
        tx,
        sqlx::query(
            "INSERT INTO notifications (kind, client_id, firmware_version, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $4)"
        )
        .bind(kind)
        .bind(client_id)
        .bind(firmware_version)
        .bind(now)
    )?;
    Ok(())
}

/// Withdraws `client_id`'s `kind` notifications: a newer message of the kind says all they said.
/// Also one a publisher holds: its publish, if under way, still goes out, but it is never put back
/// or sent again (it would go out after the newer message, e.g. announce a version after the
/// rollback that replaced it), and the publisher's settlement of a row that is gone changes
/// nothing. Returns how many.
pub async fn supersede(tx: &mut Tx, kind: &str, client_id: &str) -> Result<u64, DbError> {
    Ok(crate::execute!(
        tx,
        sqlx::query("DELETE FROM notifications WHERE client_id = $1 AND kind = $2")
            .bind(client_id)
            .bind(kind)
    )?)
}

/// [`supersede`] for every device of model `model_id`.
pub async fn supersede_for_model(tx: &mut Tx, kind: &str, model_id: i64) -> Result<u64, DbError> {
    Ok(crate::execute!(
        tx,
        sqlx::query(
            "DELETE FROM notifications WHERE kind = $1
                 AND client_id IN (
                     SELECT 'iotdevice-' || m.code || '-' || d.key
                     FROM devices d JOIN device_models m ON m.id = d.device_model_id
                     WHERE d.device_model_id = $2)"
        )
        .bind(kind)
        .bind(model_id)
    )?)
}

/// [`supersede`] for the device `device_id`, whatever its model: its rotation ended (completed,
/// timed out, or its secret replaced by an admin), so a provisioning message queued for it would
/// only send it for a package it no longer needs (and, after a broker outage, many such devices
/// at once). Returns how many.
pub async fn withdraw_kind_for_device(
    tx: &mut Tx,
    kind: &str,
    device_id: i64,
) -> Result<u64, DbError> {
    Ok(crate::execute!(
        tx,
        sqlx::query(
            "DELETE FROM notifications WHERE kind = $1
                 AND client_id = (
                     SELECT 'iotdevice-' || m.code || '-' || d.key
                     FROM devices d JOIN device_models m ON m.id = d.device_model_id
                     WHERE d.id = $2)"
        )
        .bind(kind)
        .bind(device_id)
    )?)
}

/// Withdraws what is queued for `client_id` (its device is being deleted).
pub async fn withdraw(tx: &mut Tx, client_id: &str) -> Result<u64, DbError> {
    Ok(crate::execute!(
        tx,
        sqlx::query("DELETE FROM notifications WHERE client_id = $1").bind(client_id)
    )?)
}

/// Queues one `kind` notification for every device of model `model_id` in one statement, to be
/// published from `due` on; returns how many.
pub async fn enqueue_for_model(
    tx: &mut Tx,
    kind: &str,
    model_id: i64,
    firmware_version: Option<&str>,
    now: DateTime<Utc>,
    due: DateTime<Utc>,
) -> Result<u64, DbError> {
    Ok(crate::execute!(
        tx,
        sqlx::query(
            "INSERT INTO notifications (kind, client_id, firmware_version, created_at, next_attempt_at)
             SELECT $1, 'iotdevice-' || m.code || '-' || d.key, $2, $3, $5
             FROM devices d JOIN device_models m ON m.id = d.device_model_id
             WHERE d.device_model_id = $4 ORDER BY d.id"
        )
        .bind(kind)
        .bind(firmware_version)
        .bind(now)
        .bind(model_id)
        .bind(due)
    )?)
}

const CLAIM_POSTGRES: &str = "UPDATE notifications SET lease_until = $2, attempts = attempts + 1
     WHERE id IN (SELECT id FROM notifications
                  WHERE next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1)
                  ORDER BY kind = 'firmware', id LIMIT $3 FOR UPDATE SKIP LOCKED)
     RETURNING id, kind, client_id, firmware_version, attempts";
const CLAIM_SQLITE: &str = "UPDATE notifications SET lease_until = $2, attempts = attempts + 1
     WHERE id IN (SELECT id FROM notifications
                  WHERE next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1)
                  ORDER BY kind = 'firmware', id LIMIT $3)
     RETURNING id, kind, client_id, firmware_version, attempts";

/// Takes up to `limit` due notifications until `lease_until`: a device's own (config,
/// provisioning) first, then a model's firmware fan-out, each oldest first. A rotation's
/// provisioning message must not wait behind the firmware messages of a model with tens of
/// thousands of devices (sent at `MQTT_NOTIFICATIONS_PER_SECOND`, 100 a second by default) until the rotation has timed
/// out. The due rows are sorted for the claim either way, so the order costs nothing more.
/// Another process takes a row only after its lease ran out (its publisher died).
pub async fn claim(
    db: &Db,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<QueuedNotification>, DbError> {
    let mut rows: Vec<QueuedNotification> = match db {
        Db::Postgres(p) => {
            sqlx::query_as(CLAIM_POSTGRES)
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
        Db::Sqlite(p) => {
            sqlx::query_as(CLAIM_SQLITE)
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
    };
    rows.sort_by_key(|r| (r.kind == "firmware", r.id));
    Ok(rows)
}

/// Removes notifications the broker acknowledged (or refused for good), where they are still
/// held with `lease_until`: a row another process took since is its to settle.
pub async fn delete(db: &Db, ids: &[i64], lease_until: DateTime<Utc>) -> Result<(), DbError> {
    each_held(
        db,
        ids,
        lease_until,
        "DELETE FROM notifications WHERE id = $1 AND lease_until = $2",
    )
    .await
}

/// Gives back rows taken with `lease_until` whose publish never started, as they were before
/// (due, the attempt not counted).
pub async fn release(db: &Db, ids: &[i64], lease_until: DateTime<Utc>) -> Result<(), DbError> {
    each_held(
        db,
        ids,
        lease_until,
        "UPDATE notifications SET lease_until = NULL, attempts = attempts - 1
         WHERE id = $1 AND lease_until = $2",
    )
    .await
}

/// Runs `statement` (`$1` the id, `$2` the lease) for each of `ids` in one transaction.
async fn each_held(
    db: &Db,
    ids: &[i64],
    lease_until: DateTime<Utc>,
    statement: &'static str,
) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for id in ids {
        crate::execute!(&mut tx, sqlx::query(statement).bind(id).bind(lease_until))?;
    }
    tx.commit().await
}

/// Puts a notification taken with `lease_until` back for another attempt at
/// `next_attempt_at` (nothing if another process has taken it since).
pub async fn retry(
    db: &Db,
    id: i64,
    lease_until: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
    error: &str,
) -> Result<(), DbError> {
    on_pool!(db, |p| sqlx::query(
        "UPDATE notifications SET lease_until = NULL, next_attempt_at = $1, last_error = $2
         WHERE id = $3 AND lease_until = $4"
    )
    .bind(next_attempt_at)
    .bind(error)
    .bind(id)
    .bind(lease_until)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// How many notifications wait, and when the oldest was queued.
pub async fn stats(db: &Db) -> Result<(i64, Option<DateTime<Utc>>), DbError> {
    let count: i64 = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications"
    )
    .fetch_one(p)
    .await)?;
    let oldest: Option<DateTime<Utc>> = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT MIN(created_at) FROM notifications"
    )
    .fetch_one(p)
    .await)?;
    Ok((count, oldest))
}
