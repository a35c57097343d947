//! Queries on `crash_groups`, their ledger `crash_group_members` and the per-version counters
//! `crash_group_versions` (SPEC §15; the design is in migration 10 and `coredumps::groups`).
//!
//! The write side is here, the read side in `views.rs`. Every query takes the caller's `Tx`: grouping runs inside the transaction that records a
//! parse result, with its event. The caller locks a group ([`lock`]) before it changes the group's
//! members or counters; these queries assume that lock is held.

use chrono::{DateTime, Utc};

use super::{DbError, Tx};
use crate::on_conn;

mod views;
pub use views::{
    count, devices_running, list, newest_dumps, open_count, stored_dumps, versions, GroupAfter,
    GroupDumpRow, GroupOrder, VersionsOf,
};

pub const STATUS_OPEN: &str = "open";
pub const STATUS_RESOLVED: &str = "resolved";
pub const STATUS_IGNORED: &str = "ignored";
pub const STATUSES: [&str; 3] = [STATUS_OPEN, STATUS_RESOLVED, STATUS_IGNORED];

/// A crash group as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CrashGroupRow {
    pub id: i64,
    pub device_model_id: i64,
    pub signature_hash: String,
    pub signature: String,
    pub title: String,
    pub status: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub coredump_count: i64,
    pub device_count: i64,
    pub resolved_at: Option<DateTime<Utc>>,
    pub regressed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a dump adds to its version's row when the row exists: one dump, the devices the inserted
/// row counts (`EXCLUDED.device_count`), and the earlier/later of the seen times. Shared by
/// [`add_to_version`] and the one-statement [`join`].
macro_rules! version_upsert {
    () => {
        "ON CONFLICT (crash_group_id, firmware_version) DO UPDATE SET
            coredump_count = crash_group_versions.coredump_count + 1,
            device_count = crash_group_versions.device_count + EXCLUDED.device_count,
            first_seen_at = CASE WHEN EXCLUDED.first_seen_at < crash_group_versions.first_seen_at
                                 THEN EXCLUDED.first_seen_at
                                 ELSE crash_group_versions.first_seen_at END,
            last_seen_at = CASE WHEN EXCLUDED.last_seen_at > crash_group_versions.last_seen_at
                                THEN EXCLUDED.last_seen_at
                                ELSE crash_group_versions.last_seen_at END"
    };
}

macro_rules! group_columns {
    () => {
        "id, device_model_id, signature_hash, signature, title, status, first_seen_at,
         last_seen_at, coredump_count, device_count, resolved_at, regressed_at, created_at,
         updated_at"
    };
}

const SELECT: &str = concat!("SELECT ", group_columns!(), " FROM crash_groups");

mod join;
pub use join::join;

/// The facts of one dump that grouping records in the ledger (all immutable on the dump's row).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberFacts {
    pub coredump_id: i64,
    pub device_id: i64,
    pub device_model_id: i64,
    pub firmware_version: String,
    pub uploaded_at: DateTime<Utc>,
}

/// Per group and firmware version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionRow {
    pub crash_group_id: i64,
    pub firmware_version: String,
    pub coredump_count: i64,
    pub device_count: i64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, whose writers are serialised.
fn for_update(tx: &Tx) -> &'static str {
    match tx {
        Tx::Postgres(_) => " FOR UPDATE",
        Tx::Sqlite(_) => "",
    }
}

/// The group a dump is in, if any.
pub async fn membership(tx: &mut Tx, coredump_id: i64) -> Result<Option<i64>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT crash_group_id FROM crash_group_members WHERE coredump_id = $1"
    )
    .bind(coredump_id)
    .fetch_optional(c)
    .await)?)
}

/// [`membership`] of `coredump_id` and [`find`] of (model, signature) in one round trip: the
/// group the dump is in now, and the group its signature names, if those exist.
pub async fn membership_and_find(
    tx: &mut Tx,
    coredump_id: i64,
    device_model_id: i64,
    signature_hash: &str,
) -> Result<(Option<i64>, Option<i64>), DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "SELECT (SELECT crash_group_id FROM crash_group_members WHERE coredump_id = $1),
                (SELECT id FROM crash_groups WHERE device_model_id = $2 AND signature_hash = $3)"
    )
    .bind(coredump_id)
    .bind(device_model_id)
    .bind(signature_hash)
    .fetch_one(c)
    .await)?)
}

/// What a new group is made of.
#[derive(Debug, Clone)]
pub struct NewGroup<'a> {
    pub device_model_id: i64,
    pub signature_hash: &'a str,
    pub signature: &'a str,
    pub title: &'a str,
    pub seen_at: DateTime<Utc>,
}

/// Creates the group of (model, signature) with no members unless it exists; true if created.
/// On PostgreSQL a concurrent creator of the same group makes this wait for its commit.
pub async fn insert_if_missing(
    tx: &mut Tx,
    group: &NewGroup<'_>,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let rows = crate::execute!(
        tx,
        sqlx::query(
            "INSERT INTO crash_groups (device_model_id, signature_hash, signature, title, status,
                                       first_seen_at, last_seen_at, coredump_count, device_count,
                                       created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'open', $5, $5, 0, 0, $6, $6)
             ON CONFLICT (device_model_id, signature_hash) DO NOTHING"
        )
        .bind(group.device_model_id)
        .bind(group.signature_hash)
        .bind(group.signature)
        .bind(group.title)
        .bind(group.seen_at)
        .bind(now)
    )?;
    Ok(rows == 1)
}

/// The id of the group of (model, signature).
pub async fn find(
    tx: &mut Tx,
    device_model_id: i64,
    signature_hash: &str,
) -> Result<Option<i64>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM crash_groups WHERE device_model_id = $1 AND signature_hash = $2"
    )
    .bind(device_model_id)
    .bind(signature_hash)
    .fetch_optional(c)
    .await)?)
}

/// Locks a group's row for the rest of the transaction (PostgreSQL; SQLite serialises writers)
/// and returns it as committed now. Callers that lock two groups lock the lower id first. The
/// lock is `FOR NO KEY UPDATE`: it excludes every other locker of the group, but not the
/// key-share checks of ledger entries being inserted for it.
pub async fn lock(tx: &mut Tx, id: i64) -> Result<Option<CrashGroupRow>, DbError> {
    let lock = match tx {
        Tx::Postgres(_) => " FOR NO KEY UPDATE",
        Tx::Sqlite(_) => "",
    };
    let sql = format!("{SELECT} WHERE id = $1{lock}");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, CrashGroupRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .fetch_optional(c)
    .await)?)
}

/// One group.
pub async fn get(tx: &mut Tx, id: i64) -> Result<Option<CrashGroupRow>, DbError> {
    let sql = format!("{SELECT} WHERE id = $1");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, CrashGroupRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .fetch_optional(c)
    .await)?)
}

/// Records a dump in the ledger under `group_id`.
pub async fn insert_member(
    tx: &mut Tx,
    group_id: i64,
    dump: &MemberFacts,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    crate::execute!(
        tx,
        sqlx::query(
            "INSERT INTO crash_group_members (coredump_id, crash_group_id, device_id,
                                              firmware_version, uploaded_at, grouped_at)
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(dump.coredump_id)
        .bind(group_id)
        .bind(dump.device_id)
        .bind(&dump.firmware_version)
        .bind(dump.uploaded_at)
        .bind(now)
    )?;
    Ok(())
}

/// Moves a dump's ledger entry to `group_id`.
pub async fn move_member(
    tx: &mut Tx,
    coredump_id: i64,
    group_id: i64,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    crate::execute!(
        tx,
        sqlx::query(
            "UPDATE crash_group_members SET crash_group_id = $1, grouped_at = $2
             WHERE coredump_id = $3"
        )
        .bind(group_id)
        .bind(now)
        .bind(coredump_id)
    )?;
    Ok(())
}

/// Whether the dump's device has another dump (not `coredump_id`) in the group: of any version,
/// and of the dump's version.
pub async fn device_presence(
    tx: &mut Tx,
    group_id: i64,
    dump: &MemberFacts,
) -> Result<(bool, bool), DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM crash_group_members
                        WHERE crash_group_id = $1 AND device_id = $2 AND coredump_id <> $4),
                EXISTS (SELECT 1 FROM crash_group_members
                        WHERE crash_group_id = $1 AND device_id = $2 AND firmware_version = $3
                          AND coredump_id <> $4)"
    )
    .bind(group_id)
    .bind(dump.device_id)
    .bind(&dump.firmware_version)
    .bind(dump.coredump_id)
    .fetch_one(c)
    .await)?)
}

/// The earliest and latest upload time among a group's ledger entries (of one version, when
/// given); `None` when it has none.
pub async fn seen_range(
    tx: &mut Tx,
    group_id: i64,
    version: Option<&str>,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, DbError> {
    let (first, last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        on_conn!(tx, |c| sqlx::query_as(
            "SELECT MIN(uploaded_at), MAX(uploaded_at) FROM crash_group_members
             WHERE crash_group_id = $1 AND ($2 IS NULL OR firmware_version = $2)"
        )
        .bind(group_id)
        .bind(version)
        .fetch_one(c)
        .await)?;
    Ok(first.zip(last))
}

/// Counts one more dump of `version` in the group (a new device for that version if
/// `new_device`).
pub async fn add_to_version(
    tx: &mut Tx,
    group_id: i64,
    version: &str,
    seen_at: DateTime<Utc>,
    new_device: bool,
) -> Result<(), DbError> {
    crate::execute!(
        tx,
        sqlx::query(concat!(
            "INSERT INTO crash_group_versions (crash_group_id, firmware_version, coredump_count,
                                               device_count, first_seen_at, last_seen_at)
             VALUES ($1, $2, 1, $3, $4, $4) ",
            version_upsert!()
        ))
        .bind(group_id)
        .bind(version)
        .bind(i64::from(new_device))
        .bind(seen_at)
    )?;
    Ok(())
}

/// Counts one dump of `version` less in the group, after its ledger entry left it: the
/// version's first and last seen are taken from the entries left; a version with no dump left
/// is removed.
pub async fn remove_from_version(
    tx: &mut Tx,
    group_id: i64,
    version: &str,
    device_left: bool,
) -> Result<(), DbError> {
    let Some((first, last)) = seen_range(tx, group_id, Some(version)).await? else {
        crate::execute!(
            tx,
            sqlx::query(
                "DELETE FROM crash_group_versions WHERE crash_group_id = $1 AND firmware_version = $2"
            )
            .bind(group_id)
            .bind(version)
        )?;
        return Ok(());
    };
    crate::execute!(
        tx,
        sqlx::query(
            "UPDATE crash_group_versions SET coredump_count = coredump_count - 1,
                    device_count = device_count - $1, first_seen_at = $2, last_seen_at = $3
             WHERE crash_group_id = $4 AND firmware_version = $5"
        )
        .bind(i64::from(device_left))
        .bind(first)
        .bind(last)
        .bind(group_id)
        .bind(version)
    )?;
    Ok(())
}

/// A change to a locked group's counters and state, applied by [`update`].
#[derive(Debug, Clone)]
pub struct GroupUpdate {
    /// Added to `coredump_count` (+1 for a dump joining, -1 for one moved out).
    pub coredumps: i64,
    /// Added to `device_count`.
    pub devices: i64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub status: String,
    pub resolved_at: Option<DateTime<Utc>>,
    pub regressed_at: Option<DateTime<Utc>>,
}

/// Applies `change` to a group (whose row the caller locked) and returns the group as it is now.
pub async fn update(
    tx: &mut Tx,
    id: i64,
    change: &GroupUpdate,
    now: DateTime<Utc>,
) -> Result<CrashGroupRow, DbError> {
    const SQL: &str = concat!(
        "UPDATE crash_groups SET coredump_count = coredump_count + $1,
                device_count = device_count + $2, first_seen_at = $3, last_seen_at = $4,
                status = $5, resolved_at = $6, regressed_at = $7, updated_at = $8
         WHERE id = $9
         RETURNING ",
        group_columns!()
    );
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, CrashGroupRow>(SQL)
        .bind(change.coredumps)
        .bind(change.devices)
        .bind(change.first_seen_at)
        .bind(change.last_seen_at)
        .bind(&change.status)
        .bind(change.resolved_at)
        .bind(change.regressed_at)
        .bind(now)
        .bind(id)
        .fetch_one(c)
        .await)?)
}

/// A parsed dump with a structured report and no group yet: what the backfill job works on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ungrouped {
    pub coredump_id: i64,
    pub device_id: i64,
    pub device_model_id: i64,
    pub firmware_version: String,
    pub uploaded_at: DateTime<Utc>,
    pub parsed_at: Option<DateTime<Utc>>,
    pub report: String,
}

impl Ungrouped {
    pub fn facts(&self) -> MemberFacts {
        MemberFacts {
            coredump_id: self.coredump_id,
            device_id: self.device_id,
            device_model_id: self.device_model_id,
            firmware_version: self.firmware_version.clone(),
            uploaded_at: self.uploaded_at,
        }
    }
}

/// Up to `limit` parsed dumps with a report and no ledger entry, with ids above `after`, in id
/// order.
pub async fn ungrouped(tx: &mut Tx, after: i64, limit: i64) -> Result<Vec<Ungrouped>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, Ungrouped>(
        "SELECT c.id AS coredump_id, c.device_id, d.device_model_id, c.firmware_version,
                c.uploaded_at, c.parsed_at, c.report
         FROM coredumps c JOIN devices d ON d.id = c.device_id
         WHERE c.id > $1 AND c.parse_status = 'PARSED' AND c.report IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM crash_group_members m WHERE m.coredump_id = c.id)
         ORDER BY c.id
         LIMIT $2"
    )
    .bind(after)
    .bind(limit)
    .fetch_all(c)
    .await)?)
}

/// Locks a dump's row (PostgreSQL) and tells whether it is still `PARSED` with the result parsed
/// at `parsed_at`, i.e. no reparse has happened since it was read.
pub async fn lock_parsed_dump(
    tx: &mut Tx,
    coredump_id: i64,
    parsed_at: Option<DateTime<Utc>>,
) -> Result<bool, DbError> {
    let sql = format!(
        "SELECT parse_status, parsed_at FROM coredumps WHERE id = $1{}",
        for_update(tx)
    );
    let row: Option<(String, Option<DateTime<Utc>>)> =
        on_conn!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(coredump_id)
            .fetch_optional(c)
            .await)?;
    Ok(row.is_some_and(|(status, at)| status == "PARSED" && at == parsed_at))
}
