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

/// A place in a model's group list: the last group of a page, by what the list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupAfter {
    /// The group's `coredump_count` or `device_count` when the list is ordered by it (ignored
    /// for [`GroupOrder::LastSeen`]).
    pub count: i64,
    pub last_seen_at: DateTime<Utc>,
    pub id: i64,
}

impl GroupAfter {
    /// Where `group` stands in a list ordered by `order`.
    pub fn of(group: &CrashGroupRow, order: GroupOrder) -> Self {
        let count = match order {
            GroupOrder::LastSeen => 0,
            GroupOrder::CoredumpCount => group.coredump_count,
            GroupOrder::DeviceCount => group.device_count,
        };
        GroupAfter {
            count,
            last_seen_at: group.last_seen_at,
            id: group.id,
        }
    }
}

/// A model's groups, optionally of one status; with `after`, only those that come after it in
/// `order` (key-set paging: a page costs the same at any depth).
pub async fn list(
    tx: &mut Tx,
    device_model_id: i64,
    status: Option<&str>,
    order: GroupOrder,
    after: Option<GroupAfter>,
    limit: Option<i64>,
) -> Result<Vec<CrashGroupRow>, DbError> {
    // Every order ends in (last_seen_at, id), descending; the counts come first when ordered by.
    let seen_after = "(last_seen_at < $5 OR (last_seen_at = $5 AND id < $6))";
    let (order_by, position) = match order {
        GroupOrder::LastSeen => ("last_seen_at DESC, id DESC", seen_after.to_string()),
        GroupOrder::CoredumpCount => (
            "coredump_count DESC, last_seen_at DESC, id DESC",
            format!("(coredump_count < $4 OR (coredump_count = $4 AND {seen_after}))"),
        ),
        GroupOrder::DeviceCount => (
            "device_count DESC, last_seen_at DESC, id DESC",
            format!("(device_count < $4 OR (device_count = $4 AND {seen_after}))"),
        ),
    };
    let position = match after {
        Some(_) => format!(" AND {position}"),
        None => String::new(),
    };
    let sql = format!(
        "{SELECT} WHERE device_model_id = $1 AND ($2 IS NULL OR status = $2){position} \
         ORDER BY {order_by} LIMIT $3"
    );
    Ok(on_conn!(tx, |c| {
        let query = sqlx::query_as::<_, CrashGroupRow>(sqlx::AssertSqlSafe(sql.clone()))
            .bind(device_model_id)
            .bind(status)
            .bind(limit.unwrap_or(i64::MAX));
        let query = match after {
            Some(a) => query.bind(a.count).bind(a.last_seen_at).bind(a.id),
            None => query,
        };
        query.fetch_all(c).await
    })?)
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
pub enum VersionsOf<'a> {
    /// Every group of this device model.
    Model(i64),
    /// This group.
    Group(i64),
    /// These groups (a page of a model's list).
    Groups(&'a [i64]),
}

/// The per-version counters of every group of a model (or of one group), in the order each
/// version was first seen.
pub async fn versions(tx: &mut Tx, of: VersionsOf<'_>) -> Result<Vec<VersionRow>, DbError> {
    let (condition, id) = match of {
        VersionsOf::Model(id) => ("g.device_model_id = $1".to_string(), Some(id)),
        VersionsOf::Group(id) => ("g.id = $1".to_string(), Some(id)),
        VersionsOf::Groups([]) => return Ok(Vec::new()),
        VersionsOf::Groups(ids) => {
            // Ids the list just read (numbers, so written into the statement), at most a page.
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            (format!("g.id IN ({})", ids.join(", ")), None)
        }
    };
    let sql = format!(
        "SELECT v.crash_group_id, v.firmware_version, v.coredump_count, v.device_count,
                v.first_seen_at, v.last_seen_at
         FROM crash_group_versions v JOIN crash_groups g ON g.id = v.crash_group_id
         WHERE {condition}
         ORDER BY v.crash_group_id, v.first_seen_at, v.firmware_version"
    );
    Ok(on_conn!(tx, |c| {
        let query = sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(sql.clone()));
        let query = match id {
            Some(id) => query.bind(id),
            None => query,
        };
        query.fetch_all(c).await
    })?)
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

/// The group's newest dumps still stored, at most `limit`. Ordered by the ledger's copy of the
/// upload time (a dump's never changes), so the ledger's (group, uploaded_at) index finds them
/// without reading every member of a group of a crash loop: 0.24 ms against 11.9 ms for a group
/// of 133,000 members on PostgreSQL.
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
         ORDER BY m.uploaded_at DESC, m.coredump_id DESC
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
