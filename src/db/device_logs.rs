//! Queries of device log lines (`device_logs`) and live-log subscriptions.

use chrono::{DateTime, Utc};

use super::{Db, DbError, Tx};
use crate::on_pool;

/// One stored line.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogLine {
    pub id: i64,
    pub device_id: i64,
    pub logged_at: DateTime<Utc>,
    pub message: String,
}

/// A live-log subscription of a stream.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Subscription {
    pub device_id: i64,
    pub entity_id: String,
    /// The newest line when the subscription was made (`None`: made by an earlier release).
    pub from_line_id: Option<i64>,
}

/// A line to store.
#[derive(Debug, Clone)]
pub struct NewLine {
    pub device_id: i64,
    pub logged_at: DateTime<Utc>,
    pub message: String,
}

/// The devices with each of these entity ids (`(entity_id, device_id)`; an entity id may name
/// several devices).
pub async fn devices_by_entity(
    db: &Db,
    entity_ids: &[String],
) -> Result<Vec<(String, i64)>, DbError> {
    let mut found = Vec::new();
    // Bounded IN lists: SQLite limits bound parameters.
    for chunk in entity_ids.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT device_entity_id, id FROM devices WHERE device_entity_id IN ({})",
            placeholders.join(", ")
        );
        let rows: Vec<(String, i64)> = on_pool!(db, |p| {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
            for id in chunk {
                q = q.bind(id);
            }
            q.fetch_all(p).await
        })?;
        found.extend(rows);
    }
    Ok(found)
}

/// Stores lines in one transaction (multi-row inserts); on PostgreSQL also wakes the live-log
/// readers of every process (delivered on commit).
pub async fn insert(db: &Db, lines: &[NewLine]) -> Result<(), DbError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    if let Tx::Postgres(t) = &mut tx {
        // Log transactions of all processes one at a time, so ids become visible in order and a
        // live stream reading "after the last id it sent" skips none (SQLite has one writer).
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOGS_LOCK)
            .execute(&mut **t)
            .await?;
    }
    for chunk in lines.chunks(300) {
        crate::on_conn!(&mut tx, |c| {
            let mut builder =
                sqlx::QueryBuilder::new("INSERT INTO device_logs (device_id, logged_at, message) ");
            builder.push_values(chunk, |mut row, line| {
                row.push_bind(line.device_id)
                    .push_bind(line.logged_at)
                    .push_bind(line.message.as_str());
            });
            builder.build().execute(c).await.map(|r| r.rows_affected())
        })?;
    }
    if let Tx::Postgres(t) = &mut tx {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(LOGS_CHANNEL)
            .execute(&mut **t)
            .await?;
    }
    tx.commit().await
}

/// The advisory lock that serialises log inserts on PostgreSQL ("logs" in ASCII).
const LOGS_LOCK: i64 = 0x6c6f_6773;

/// The PostgreSQL channel new log lines are announced on.
pub const LOGS_CHANNEL: &str = "iotsupport_device_logs";

/// The newest line id (0 without lines).
pub async fn newest_id(db: &Db) -> Result<i64, DbError> {
    let id: Option<i64> = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT MAX(id) FROM device_logs"
    )
    .fetch_one(p)
    .await)?;
    Ok(id.unwrap_or(0))
}

/// A window of one device's lines: `[from, to]` (either open), optionally matching a LIKE
/// `pattern` (case-insensitive, `\` escapes), at most `limit`, oldest first or newest first.
#[derive(Debug, Clone)]
pub struct Window<'a> {
    pub device_id: i64,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub pattern: Option<&'a str>,
    pub newest_first: bool,
    pub limit: i64,
}

pub async fn window(db: &Db, w: &Window<'_>) -> Result<Vec<LogLine>, DbError> {
    let order = if w.newest_first { "DESC" } else { "ASC" };
    let like = match db {
        Db::Postgres(_) => "ILIKE",
        // SQLite's LIKE ignores ASCII case.
        Db::Sqlite(_) => "LIKE",
    };
    let sql = format!(
        "SELECT id, device_id, logged_at, message FROM device_logs
         WHERE device_id = $1 AND ($2 IS NULL OR logged_at >= $2) AND ($3 IS NULL OR logged_at <= $3)
           AND ($4 IS NULL OR message {like} $4 ESCAPE '\\')
         ORDER BY logged_at {order}, id {order} LIMIT $5"
    );
    Ok(on_pool!(db, |p| sqlx::query_as::<_, LogLine>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(w.device_id)
    .bind(w.from)
    .bind(w.to)
    .bind(w.pattern)
    .bind(w.limit)
    .fetch_all(p)
    .await)?)
}

/// Lines after `after_id` of these devices, oldest first, at most `limit` (for live streams).
pub async fn after(
    db: &Db,
    device_ids: &[i64],
    after_id: i64,
    limit: i64,
) -> Result<Vec<LogLine>, DbError> {
    between(db, device_ids, after_id, i64::MAX, limit).await
}

/// The first `limit` lines of `device_ids` with ids in `(after_id, up_to]`, by id.
pub async fn between(
    db: &Db,
    device_ids: &[i64],
    after_id: i64,
    up_to: i64,
    limit: i64,
) -> Result<Vec<LogLine>, DbError> {
    if device_ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..device_ids.len())
        .map(|i| format!("${}", i + 4))
        .collect();
    let sql = format!(
        "SELECT id, device_id, logged_at, message FROM device_logs
         WHERE id > $1 AND id <= $3 AND device_id IN ({}) ORDER BY id LIMIT $2",
        placeholders.join(", ")
    );
    Ok(on_pool!(db, |p| {
        let mut q = sqlx::query_as::<_, LogLine>(sqlx::AssertSqlSafe(sql.clone()))
            .bind(after_id)
            .bind(limit)
            .bind(up_to);
        for id in device_ids {
            q = q.bind(id);
        }
        q.fetch_all(p).await
    })?)
}

/// Deletes up to `batch` lines older than `cutoff`; returns how many.
pub async fn delete_older_than(db: &Db, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query(
        "DELETE FROM device_logs WHERE id IN
            (SELECT id FROM device_logs WHERE logged_at < $1 ORDER BY logged_at LIMIT $2)"
    )
    .bind(cutoff)
    .bind(batch)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Deletes a device's lines beyond its newest `keep`; returns how many.
pub async fn keep_newest(db: &Db, device_id: i64, keep: i64) -> Result<u64, DbError> {
    // PostgreSQL takes OFFSET alone; SQLite needs a LIMIT before it (-1: none).
    let limit = match db {
        Db::Postgres(_) => "",
        Db::Sqlite(_) => "LIMIT -1",
    };
    let sql = format!(
        "DELETE FROM device_logs WHERE device_id = $1 AND id IN
            (SELECT id FROM device_logs WHERE device_id = $1
             ORDER BY logged_at DESC, id DESC {limit} OFFSET $2)"
    );
    Ok(on_pool!(db, |p| sqlx::query(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(device_id)
    .bind(keep)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Records that stream `request_id` wants `device_id`'s live lines.
pub async fn subscribe(db: &Db, request_id: &str, device_id: i64) -> Result<(), DbError> {
    let now = super::now();
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO device_log_subscriptions (request_id, device_id, renewed_at, from_line_id)
         VALUES ($1, $2, $3, (SELECT COALESCE(MAX(id), 0) FROM device_logs))
         ON CONFLICT (request_id, device_id) DO UPDATE SET renewed_at = excluded.renewed_at"
    )
    .bind(request_id)
    .bind(device_id)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Removes a subscription; returns whether there was one.
pub async fn unsubscribe(db: &Db, request_id: &str, device_id: i64) -> Result<bool, DbError> {
    let removed = on_pool!(db, |p| sqlx::query(
        "DELETE FROM device_log_subscriptions WHERE request_id = $1 AND device_id = $2"
    )
    .bind(request_id)
    .bind(device_id)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(removed == 1)
}

/// The devices (with their entity ids) stream `request_id` is subscribed to.
pub async fn subscriptions(db: &Db, request_id: &str) -> Result<Vec<Subscription>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, Subscription>(
        "SELECT d.id AS device_id, d.device_entity_id AS entity_id, s.from_line_id
         FROM device_log_subscriptions s
         JOIN devices d ON d.id = s.device_id
         WHERE s.request_id = $1 AND d.device_entity_id IS NOT NULL"
    )
    .bind(request_id)
    .fetch_all(p)
    .await)?)
}

/// Marks stream `request_id`'s subscriptions as still wanted at `now`.
pub async fn renew_subscriptions(
    db: &Db,
    request_id: &str,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    on_pool!(db, |p| sqlx::query(
        "UPDATE device_log_subscriptions SET renewed_at = $1 WHERE request_id = $2"
    )
    .bind(now)
    .bind(request_id)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Forgets subscriptions made or renewed before `cutoff` (streams that went away without
/// unsubscribing).
pub async fn prune_subscriptions(db: &Db, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query(
        "DELETE FROM device_log_subscriptions WHERE renewed_at < $1"
    )
    .bind(cutoff)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}
