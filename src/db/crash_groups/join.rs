//! Counting a dump into a group whose row the caller has locked: the ledger read that decides
//! whether the dump's device is new to the group (and to its version), the version's counters and
//! the group's, in one statement on PostgreSQL.
//!
//! Every dump of a group waits for the group's row lock in turn, so each round trip made while
//! holding it is paid once per dump of the group in sequence; this statement replaces three. It
//! runs after the lock was granted, so its snapshot sees every ledger entry committed by the
//! transactions that held the lock before. SQLite, whose writers are serialised anyway, runs the
//! three statements.

use super::{CrashGroupRow, GroupUpdate, MemberFacts};
use crate::db::{DbError, Tx};

const JOIN_POSTGRES: &str = concat!(
    "WITH p AS (
        SELECT EXISTS (SELECT 1 FROM crash_group_members
                       WHERE crash_group_id = $1 AND device_id = $2 AND coredump_id <> $4) AS seen,
               EXISTS (SELECT 1 FROM crash_group_members
                       WHERE crash_group_id = $1 AND device_id = $2 AND firmware_version = $3
                         AND coredump_id <> $4) AS seen_version),
     v AS (
        INSERT INTO crash_group_versions (crash_group_id, firmware_version, coredump_count,
                                          device_count, first_seen_at, last_seen_at)
        SELECT $1, $3, 1, CASE WHEN p.seen_version THEN 0 ELSE 1 END, $5, $5 FROM p ",
    version_upsert!(),
    ")
     UPDATE crash_groups SET coredump_count = coredump_count + $6,
            device_count = device_count + CASE WHEN (SELECT seen FROM p) THEN 0 ELSE 1 END,
            first_seen_at = $7, last_seen_at = $8, status = $9, resolved_at = $10,
            regressed_at = $11, updated_at = $12
     WHERE id = $1
     RETURNING ",
    group_columns!()
);

/// Counts `dump` (whose ledger entry is already in the group) into the locked group `group_id`:
/// `change` gives everything but the device count (its `devices` is ignored), which the ledger
/// decides. Returns the group as it is now.
pub async fn join(
    tx: &mut Tx,
    group_id: i64,
    dump: &MemberFacts,
    change: &GroupUpdate,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<CrashGroupRow, DbError> {
    match tx {
        Tx::Postgres(t) => Ok(sqlx::query_as::<_, CrashGroupRow>(JOIN_POSTGRES)
            .bind(group_id)
            .bind(dump.device_id)
            .bind(&dump.firmware_version)
            .bind(dump.coredump_id)
            .bind(dump.uploaded_at)
            .bind(change.coredumps)
            .bind(change.first_seen_at)
            .bind(change.last_seen_at)
            .bind(&change.status)
            .bind(change.resolved_at)
            .bind(change.regressed_at)
            .bind(now)
            .fetch_one(&mut **t)
            .await?),
        Tx::Sqlite(_) => {
            let (seen, seen_version) = super::device_presence(tx, group_id, dump).await?;
            super::add_to_version(
                tx,
                group_id,
                &dump.firmware_version,
                dump.uploaded_at,
                !seen_version,
            )
            .await?;
            let change = GroupUpdate {
                devices: i64::from(!seen),
                ..change.clone()
            };
            super::update(tx, group_id, &change, now).await
        }
    }
}
