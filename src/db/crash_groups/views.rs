//! The read side of crash groups: a model's groups in an order, per-version counters, the
//! devices running each version, a group's newest stored dumps.

use chrono::{DateTime, Utc};

use super::{CrashGroupRow, VersionRow, SELECT, STATUS_OPEN};
use crate::db::{Db, DbError, Tx};
use crate::{on_conn, on_pool};

/// How a model's groups are ordered; every order is descending, then newest id first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOrder {
    LastSeen,
    CoredumpCount,
    DeviceCount,
}

/// A model's groups, optionally of one status.
pub async fn list(
    tx: &mut Tx,
    device_model_id: i64,
    status: Option<&str>,
    order: GroupOrder,
    limit: Option<i64>,
) -> Result<Vec<CrashGroupRow>, DbError> {
    let order = match order {
        GroupOrder::LastSeen => "last_seen_at DESC, id DESC",
        GroupOrder::CoredumpCount => "coredump_count DESC, last_seen_at DESC, id DESC",
        GroupOrder::DeviceCount => "device_count DESC, last_seen_at DESC, id DESC",
    };
    let sql = format!(
        "{SELECT} WHERE device_model_id = $1 AND ($2 IS NULL OR status = $2) ORDER BY {order} \
         LIMIT $3"
    );
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, CrashGroupRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(device_model_id)
    .bind(status)
    .bind(limit.unwrap_or(i64::MAX))
    .fetch_all(c)
    .await)?)
}

/// How many of a model's groups have `status`.
pub async fn count(tx: &mut Tx, device_model_id: i64, status: &str) -> Result<i64, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM crash_groups WHERE device_model_id = $1 AND status = $2"
    )
    .bind(device_model_id)
    .bind(status)
    .fetch_one(c)
    .await)?)
}

/// How many groups are open, over all models (the `crash_groups_open` gauge). A scan of
/// `crash_groups`, which holds one row per distinct crash of a model: thousands of rows at most.
pub async fn open_count(db: &Db) -> Result<i64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM crash_groups WHERE status = $1"
    )
    .bind(STATUS_OPEN)
    .fetch_one(p)
    .await)?)
}

/// Whose per-version counters [`versions`] reads.
#[derive(Debug, Clone, Copy)]
pub enum VersionsOf {
    /// Every group of this device model.
    Model(i64),
    /// This group.
    Group(i64),
}

/// The per-version counters of every group of a model (or of one group), in the order each
/// version was first seen.
pub async fn versions(tx: &mut Tx, of: VersionsOf) -> Result<Vec<VersionRow>, DbError> {
    let (condition, id) = match of {
        VersionsOf::Model(id) => ("g.device_model_id = $1", id),
        VersionsOf::Group(id) => ("g.id = $1", id),
    };
    let sql = format!(
        "SELECT v.crash_group_id, v.firmware_version, v.coredump_count, v.device_count,
                v.first_seen_at, v.last_seen_at
         FROM crash_group_versions v JOIN crash_groups g ON g.id = v.crash_group_id
         WHERE {condition}
         ORDER BY v.crash_group_id, v.first_seen_at, v.firmware_version"
    );
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, VersionRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .fetch_all(c)
    .await)?)
}

/// How many of a model's devices last reported running each version.
pub async fn devices_running(
    tx: &mut Tx,
    device_model_id: i64,
) -> Result<Vec<(String, i64)>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "SELECT running_firmware_version, COUNT(*) FROM devices
         WHERE device_model_id = $1 AND running_firmware_version IS NOT NULL
         GROUP BY running_firmware_version"
    )
    .bind(device_model_id)
    .fetch_all(c)
    .await)?)
}

/// A stored dump of a group, with its device's key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupDumpRow {
    pub id: i64,
    pub device_id: i64,
    pub device_key: String,
    pub chip: String,
    pub firmware_version: String,
    pub size: i64,
    pub parse_status: String,
    pub uploaded_at: DateTime<Utc>,
    pub parsed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The group's newest dumps still stored, at most `limit`.
pub async fn newest_dumps(
    tx: &mut Tx,
    group_id: i64,
    limit: i64,
) -> Result<Vec<GroupDumpRow>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, GroupDumpRow>(
        "SELECT c.id, c.device_id, d.key AS device_key, c.chip, c.firmware_version, c.size,
                c.parse_status, c.uploaded_at, c.parsed_at, c.created_at
         FROM crash_group_members m
         JOIN coredumps c ON c.id = m.coredump_id
         JOIN devices d ON d.id = c.device_id
         WHERE m.crash_group_id = $1
         ORDER BY c.uploaded_at DESC, c.id DESC
         LIMIT $2"
    )
    .bind(group_id)
    .bind(limit)
    .fetch_all(c)
    .await)?)
}

/// How many of the group's dumps are still stored.
pub async fn stored_dumps(tx: &mut Tx, group_id: i64) -> Result<i64, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM crash_group_members m JOIN coredumps c ON c.id = m.coredump_id
         WHERE m.crash_group_id = $1"
    )
    .bind(group_id)
    .fetch_one(c)
    .await)?)
}
