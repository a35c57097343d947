//! Queries of fleet credential rotation (the state machine is in `crate::credentials::rotation`).

use chrono::{DateTime, Utc};

use super::{DbError, Tx};
use crate::on_conn;

/// Arbitrary but fixed: the advisory lock that serialises starting a rotation (PostgreSQL).
const ROTATION_LOCK: i64 = 0x0069_6f74_726f_7401;

/// Serialises the "is anyone PENDING? then start the next one" step across processes for the rest
/// of the transaction. SQLite write transactions are serialised already.
pub async fn lock(tx: &mut Tx) -> Result<(), DbError> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ROTATION_LOCK)
            .execute(&mut **t)
            .await?;
    }
    Ok(())
}

/// T1: every active `OK` device becomes `QUEUED`; returns how many.
pub async fn queue_fleet(tx: &mut Tx) -> Result<u64, DbError> {
    Ok(crate::execute!(
        tx,
        sqlx::query(
            "UPDATE devices SET rotation_state = 'QUEUED' WHERE rotation_state = 'OK' AND active"
        )
    )?)
}

/// T2: an `OK` or `TIMEOUT` device becomes `QUEUED`; returns whether it did.
pub async fn queue_device(tx: &mut Tx, id: i64) -> Result<bool, DbError> {
    let rows = crate::execute!(
        tx,
        sqlx::query(
            "UPDATE devices SET rotation_state = 'QUEUED'
         WHERE id = $1 AND rotation_state IN ('OK', 'TIMEOUT')"
        )
        .bind(id)
    )?;
    Ok(rows == 1)
}

/// The device that is `PENDING`, if any.
pub async fn pending_device(tx: &mut Tx) -> Result<Option<i64>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM devices WHERE rotation_state = 'PENDING' ORDER BY id LIMIT 1"
    )
    .fetch_optional(c)
    .await)?)
}

/// A device about to be rotated.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RotationTarget {
    pub id: i64,
    pub key: String,
    pub model_code: String,
}

/// T3's choice: the `QUEUED` device with the oldest secret (never-set first), else the `TIMEOUT`
/// device whose last attempt is oldest among those that timed out at or before `retry_before`.
pub async fn next_to_rotate(
    tx: &mut Tx,
    retry_before: DateTime<Utc>,
) -> Result<Option<RotationTarget>, DbError> {
    let queued: Option<RotationTarget> = on_conn!(tx, |c| sqlx::query_as(
        "SELECT d.id, d.key, m.code AS model_code
         FROM devices d JOIN device_models m ON m.id = d.device_model_id
         WHERE d.rotation_state = 'QUEUED'
         ORDER BY d.secret_created_at ASC NULLS FIRST, d.id LIMIT 1"
    )
    .fetch_optional(c)
    .await)?;
    if queued.is_some() {
        return Ok(queued);
    }
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "SELECT d.id, d.key, m.code AS model_code
         FROM devices d JOIN device_models m ON m.id = d.device_model_id
         WHERE d.rotation_state = 'TIMEOUT'
           AND (d.rotation_timed_out_at IS NULL OR d.rotation_timed_out_at <= $1)
         ORDER BY d.last_rotation_attempt_at ASC NULLS FIRST, d.id LIMIT 1"
    )
    .bind(retry_before)
    .fetch_optional(c)
    .await)?)
}

/// T3's effect: the device is `PENDING` from `now`.
pub async fn mark_pending(tx: &mut Tx, id: i64, now: DateTime<Utc>) -> Result<(), DbError> {
    on_conn!(tx, |c| {
        sqlx::query(
        "UPDATE devices SET rotation_state = 'PENDING', last_rotation_attempt_at = $1 WHERE id = $2"
    )
    .bind(now)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// T5: every `PENDING` device whose attempt started before `cutoff` becomes `TIMEOUT`; returns
/// their ids and keys. One statement, so of several processes exactly one times a device out. A
/// device with no attempt time (an adopted or hand-edited row; we always write one) times out
/// too: the original never timed it out, and it blocked every further rotation.
pub async fn time_out(
    tx: &mut Tx,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<(i64, String)>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "UPDATE devices SET rotation_state = 'TIMEOUT', rotation_timed_out_at = $2
         WHERE rotation_state = 'PENDING'
           AND (last_rotation_attempt_at < $1 OR last_rotation_attempt_at IS NULL)
         RETURNING id, key"
    )
    .bind(cutoff)
    .bind(now)
    .fetch_all(c)
    .await)?)
}

/// What `GET /api/rotation/status` counts.
#[derive(Debug, Clone, Default)]
pub struct StatusCounts {
    pub by_state: Vec<(String, i64)>,
    pub inactive: i64,
    pub pending_device_id: Option<i64>,
    pub last_completed: Option<DateTime<Utc>>,
}

/// Reads `device_rotation_counts` (kept by the triggers of migration 16) and, per (state, active)
/// pair that has devices, the newest completion from `ix_devices_rotation_summary`: a few index
/// lookups, whatever the fleet's size. One statement, so one snapshot.
pub async fn status(tx: &mut Tx) -> Result<StatusCounts, DbError> {
    let rows: Vec<(String, bool, i64, Option<DateTime<Utc>>)> = on_conn!(tx, |c| sqlx::query_as(
        "SELECT c.rotation_state, c.active, c.devices,
                (SELECT MAX(d.last_rotation_completed_at) FROM devices d
                 WHERE d.rotation_state = c.rotation_state AND d.active = c.active)
         FROM (SELECT rotation_state, active, CAST(SUM(devices) AS BIGINT) AS devices
               FROM device_rotation_counts GROUP BY rotation_state, active
               HAVING SUM(devices) <> 0) c
         ORDER BY c.rotation_state, c.active"
    )
    .fetch_all(c)
    .await)?;
    let mut by_state: Vec<(String, i64)> = Vec::new();
    for (state, _, devices, _) in &rows {
        match by_state.last_mut() {
            Some((last, n)) if last == state => *n += devices,
            _ => by_state.push((state.clone(), *devices)),
        }
    }
    Ok(StatusCounts {
        by_state,
        inactive: rows.iter().filter(|r| !r.1).map(|r| r.2).sum(),
        pending_device_id: pending_device(tx).await?,
        last_completed: rows.iter().filter_map(|r| r.3).max(),
    })
}

/// One device as the rotation dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DashboardRow {
    pub id: i64,
    pub key: String,
    pub device_name: Option<String>,
    pub device_model_code: String,
    pub active: bool,
    pub rotation_state: String,
    pub last_rotation_completed_at: Option<DateTime<Utc>>,
}

pub async fn dashboard(tx: &mut Tx) -> Result<Vec<DashboardRow>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "SELECT d.id, d.key, d.device_name, m.code AS device_model_code, d.active,
                d.rotation_state, d.last_rotation_completed_at
         FROM devices d JOIN device_models m ON m.id = d.device_model_id ORDER BY d.key"
    )
    .fetch_all(c)
    .await)?)
}

/// The rotation dashboard's four lists as conditions on `devices d`, in the order healthy,
/// warning, critical, inactive: the rule of `credentials::dashboard::group`, where `$1` is the
/// critical cutoff (now minus the threshold in days). Used when the lists are capped, so that a
/// capped dashboard reads its pages, not the fleet.
const HEALTH_CONDITIONS: [&str; 4] = [
    "d.active AND d.rotation_state <> 'TIMEOUT'",
    "d.active AND d.rotation_state = 'TIMEOUT'
        AND (d.last_rotation_completed_at IS NULL OR d.last_rotation_completed_at > $1)",
    "d.active AND d.rotation_state = 'TIMEOUT' AND d.last_rotation_completed_at <= $1",
    "NOT d.active",
];

/// How many devices each dashboard list holds (healthy, warning, critical, inactive), from
/// `device_rotation_counts`. Which active `TIMEOUT` devices are critical depends on the time of
/// the request: the counters hold them per UTC day of their last completion, so whole days
/// before the cutoff's day are summed and only the devices that completed on the cutoff's own
/// day are counted, from `ix_devices_rotation_summary`; warning is the rest. One statement, so
/// one snapshot.
pub async fn dashboard_counts(tx: &mut Tx, cutoff: DateTime<Utc>) -> Result<[i64; 4], DbError> {
    let counted = |condition: &str| {
        format!(
            "COALESCE((SELECT CAST(SUM(devices) AS BIGINT) FROM device_rotation_counts
                       WHERE {condition}), 0)"
        )
    };
    let sql = format!(
        "SELECT {}, {}, {} + (SELECT COUNT(*) FROM devices d
                              WHERE {} AND d.last_rotation_completed_at >= $3), {}",
        counted("active AND rotation_state <> 'TIMEOUT'"),
        counted("active AND rotation_state = 'TIMEOUT'"),
        counted(
            "active AND rotation_state = 'TIMEOUT' AND completed_day <> '' AND completed_day < $2"
        ),
        HEALTH_CONDITIONS[HealthList::Critical as usize],
        counted("NOT active"),
    );
    let day = cutoff.date_naive();
    let day_start = day.and_time(chrono::NaiveTime::MIN).and_utc();
    let (healthy, timeout, critical, inactive): (i64, i64, i64, i64) =
        on_conn!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(cutoff)
            .bind(day.format("%Y-%m-%d").to_string())
            .bind(day_start)
            .fetch_one(c)
            .await)?;
    Ok([healthy, (timeout - critical).max(0), critical, inactive])
}

/// One of the rotation dashboard's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthList {
    Healthy = 0,
    Warning = 1,
    Critical = 2,
    Inactive = 3,
}

/// The first `limit` devices, in key order, of one dashboard list.
pub async fn dashboard_page(
    tx: &mut Tx,
    list: HealthList,
    cutoff: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<DashboardRow>, DbError> {
    let condition = HEALTH_CONDITIONS[list as usize];
    let sql = format!(
        "SELECT d.id, d.key, d.device_name, m.code AS device_model_code, d.active,
                d.rotation_state, d.last_rotation_completed_at
         FROM devices d JOIN device_models m ON m.id = d.device_model_id
         WHERE {condition} ORDER BY d.key LIMIT {limit}"
    );
    Ok(on_conn!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(cutoff)
    .fetch_all(c)
    .await)?)
}

/// A value of the `settings` table.
pub async fn setting(tx: &mut Tx, key: &str) -> Result<Option<String>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT value FROM settings WHERE key = $1"
    )
    .bind(key)
    .fetch_optional(c)
    .await)?)
}

/// Sets a value of the `settings` table if it is still `expected` (`None`: absent); returns
/// whether it did, so of several processes only one acts on one schedule tick.
pub async fn compare_and_set_setting(
    tx: &mut Tx,
    key: &str,
    expected: Option<&str>,
    value: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let rows = match expected {
        Some(expected) => crate::execute!(
            tx,
            sqlx::query(
                "UPDATE settings SET value = $1, updated_at = $2 WHERE key = $3 AND value = $4"
            )
            .bind(value)
            .bind(now)
            .bind(key)
            .bind(expected)
        )?,
        None => crate::execute!(
            tx,
            sqlx::query(
                "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO NOTHING"
            )
            .bind(key)
            .bind(value)
            .bind(now)
        )?,
    };
    Ok(rows == 1)
}

/// A counter of `device_rotation_counts` that disagrees with a count of the devices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct CountDrift {
    pub active: bool,
    pub rotation_state: String,
    pub completed_day: String,
    pub kept: i64,
    pub counted: i64,
}

/// Migration 16's `completed_day` of a row of `devices`, in the database's SQL.
fn completed_day_sql(db: &super::Db) -> &'static str {
    match db {
        super::Db::Postgres(_) => {
            "device_rotation_completed_day(active, rotation_state, last_rotation_completed_at)"
        }
        super::Db::Sqlite(_) => {
            "CASE WHEN active AND rotation_state = 'TIMEOUT'
                  THEN COALESCE(date(last_rotation_completed_at), '') ELSE '' END"
        }
    }
}

/// Where the counters and a count of the devices disagree (for `reconcile`; reads every device).
/// One statement, so both sides are of one snapshot.
pub async fn count_drift(db: &super::Db) -> Result<Vec<CountDrift>, DbError> {
    let sql = format!(
        "SELECT active, rotation_state, completed_day,
                CAST(SUM(kept) AS BIGINT) AS kept, CAST(SUM(counted) AS BIGINT) AS counted
         FROM (SELECT active, rotation_state, completed_day, devices AS kept, 0 AS counted
               FROM device_rotation_counts
               UNION ALL
               SELECT active, rotation_state, {} AS completed_day, 0 AS kept, COUNT(*) AS counted
               FROM devices GROUP BY 1, 2, 3) AS both_sides
         GROUP BY active, rotation_state, completed_day HAVING SUM(kept) <> SUM(counted)
         ORDER BY active, rotation_state, completed_day",
        completed_day_sql(db)
    );
    Ok(crate::on_pool!(db, |p| sqlx::query_as(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .fetch_all(p)
    .await)?)
}

/// Replaces the counters with a count of the devices, while no device can change and no other
/// recount runs (PostgreSQL: a lock that lets readers in; SQLite: its write transaction).
pub async fn recount(db: &super::Db) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    if let Tx::Postgres(t) = &mut tx {
        // Excludes the devices' writers, as SHARE would, and also another recount (two SHARE
        // locks are compatible: the second's DELETE skipped the first's new rows, and its
        // INSERT then failed on their keys).
        sqlx::query("LOCK TABLE devices IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut **t)
            .await?;
    }
    crate::execute!(&mut tx, sqlx::query("DELETE FROM device_rotation_counts"))?;
    let sql = format!(
        "INSERT INTO device_rotation_counts (active, rotation_state, completed_day, devices)
         SELECT active, rotation_state, {}, COUNT(*) FROM devices GROUP BY 1, 2, 3",
        completed_day_sql(db)
    );
    crate::execute!(&mut tx, sqlx::query(sqlx::AssertSqlSafe(sql.clone())))?;
    tx.commit().await?;
    Ok(())
}
