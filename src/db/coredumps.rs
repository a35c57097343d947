//! Queries on `coredumps` (SPEC §2, §8).
//!
//! Every admin query is scoped by `device_id` as well as the dump's id, so a dump of another
//! device under this device's URL is simply not found.

use chrono::{DateTime, Utc};

use super::{now, Db, DbError, Tx};
use crate::{on_conn, on_pool};

pub const STATUS_PENDING: &str = "PENDING";
pub const STATUS_PARSED: &str = "PARSED";
pub const STATUS_ERROR: &str = "ERROR";

/// A core dump row with everything the admin API shows.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CoredumpRow {
    pub id: i64,
    pub device_id: i64,
    pub chip: String,
    pub firmware_version: String,
    pub size: i64,
    pub parse_status: String,
    /// The text report when `PARSED`, the reason when `ERROR`.
    pub parsed_output: Option<String>,
    /// The built-in parser's structured report (JSON text).
    pub report: Option<String>,
    pub uploaded_at: DateTime<Utc>,
    pub parsed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The crash group the dump is in (SPEC §15); `None` until it is grouped.
    pub crash_group_id: Option<i64>,
}

const SELECT: &str = "SELECT c.id, c.device_id, c.chip, c.firmware_version, c.size,
        c.parse_status, c.parsed_output, c.report, c.uploaded_at, c.parsed_at, c.created_at,
        c.updated_at, m.crash_group_id
    FROM coredumps c LEFT JOIN crash_group_members m ON m.coredump_id = c.id";

/// The key of a device (its dumps' object keys are built from it), or `None` if it does not exist.
pub async fn device_key(tx: &mut Tx, device_id: i64) -> Result<Option<String>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT key FROM devices WHERE id = $1"
    )
    .bind(device_id)
    .fetch_optional(c)
    .await)?)
}

/// Inserts a `PENDING` dump and returns its id (the transaction is flushed: the id is final).
pub async fn insert(tx: &mut Tx, new: &NewCoredump<'_>) -> Result<i64, DbError> {
    let now = now();
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "INSERT INTO coredumps (device_id, chip, firmware_version, size, parse_status,
                                uploaded_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'PENDING', $5, $5, $5) RETURNING id"
    )
    .bind(new.device_id)
    .bind(new.chip)
    .bind(new.firmware_version)
    .bind(new.size)
    .bind(now)
    .fetch_one(c)
    .await)?)
}

/// PostgreSQL: [`lock_device_dumps`] and the insert of a dump under its reserved `id`,
/// in one statement (the lock first: the row's foreign-key check then finds the device already
/// locked by this transaction). The lock of the firmware version the dump reports is held shared
/// until the commit: firmware retention, which spares versions that pending dumps report, waits
/// for the dump before it looks (`firmware_versions::lock_for_deletion`).
/// Returns the device's `coredump_count` with the new dump counted (see [`delete_beyond`]: within
/// `MAX_COREDUMPS` there is nothing to prune, and the caller need not ask), `None` when the device
/// no longer exists.
pub async fn lock_device_and_insert(
    t: &mut sqlx::PgConnection,
    id: i64,
    new: &NewCoredump<'_>,
) -> Result<Option<i64>, DbError> {
    Ok(sqlx::query_scalar(
        "WITH device AS (
             SELECT id, device_model_id, coredump_count FROM devices WHERE id = $2
             FOR NO KEY UPDATE
         ),
         version_lock AS (
             SELECT pg_advisory_xact_lock_shared($7, hashtext(device_model_id::text || '/' || $4))
             FROM device
         ),
         inserted AS (
             INSERT INTO coredumps (id, device_id, chip, firmware_version, size, parse_status,
                                    uploaded_at, created_at, updated_at)
             SELECT $1, device.id, $3, $4, $5, 'PENDING', $6, $6, $6
             FROM device, (SELECT COUNT(*) FROM version_lock) AS locked
             RETURNING id
         )
         SELECT CAST(device.coredump_count + 1 AS BIGINT) FROM inserted, device",
    )
    .bind(id)
    .bind(new.device_id)
    .bind(new.chip)
    .bind(new.firmware_version)
    .bind(new.size)
    .bind(now())
    .bind(crate::db::firmware_versions::VERSION_LOCK_CLASS)
    .fetch_optional(t)
    .await?)
}

/// A new dump's row.
pub struct NewCoredump<'a> {
    pub device_id: i64,
    pub chip: &'a str,
    pub firmware_version: &'a str,
    pub size: i64,
}

/// How many ids one reservation draws at most while it skips ids in use (see [`reserve_id`]).
const ID_CANDIDATES: i32 = 1000;

/// PostgreSQL: the next free id of `coredumps` from its sequence, without a transaction (a sequence
/// never hands out a value twice, committed or not), and in the same statement any deletion of
/// that id's key for `device_key` still queued in the outbox withdrawn, before the object is
/// written (the outbox invariant: a sequence turned back by a database restore hands out ids
/// whose keys a repair may have queued; a worker deleting one right now finishes first, as the
/// withdrawal waits for its lock). An error on SQLite, which has no sequences: its ids come from
/// the insert, and its upload withdraws such deletions in its transaction.
pub async fn reserve_id(db: &Db, device_key: &str) -> Result<i64, DbError> {
    match db {
        Db::Postgres(pool) => {
            let (prefix, suffix) = crate::layout::coredump_key_around_id(device_key)
                .map_err(|e| DbError::Other(sqlx::Error::Protocol(e.to_string())))?;
            // An id a row already has is skipped: the sequence can be behind the table (a
            // data-only restore that did not carry it, a promoted logical replica), and the
            // upload writes its object under the id before it inserts the row. So is an id the
            // crash-group ledger still names (a deleted dump's: the ledger outlives dumps), which
            // a new dump would otherwise inherit, group and counts included. The recursive
            // query draws the next candidate only while the last one is taken (at most
            // `ID_CANDIDATES`, each a gap): one `nextval` when the sequence is right, whatever
            // plan the server picks. Each check is one probe of a primary key: `OFFSET 0` keeps
            // PostgreSQL from turning it into a hash of the whole table, which it did (a
            // sequential scan of `coredumps` per upload, 4 ms each at 5,000 rows) while the
            // tables' statistics still described them as nearly empty, as they do for a while
            // after a burst.
            let reserved: Option<i64> = sqlx::query_scalar(
                "WITH RECURSIVE candidates (id, n) AS (
                     SELECT nextval(pg_get_serial_sequence('coredumps', 'id')), 1
                     UNION ALL
                     SELECT nextval(pg_get_serial_sequence('coredumps', 'id')), n + 1
                     FROM candidates
                     WHERE n < $3 AND (
                         EXISTS (SELECT 1 FROM coredumps c WHERE c.id = candidates.id OFFSET 0)
                         OR EXISTS (SELECT 1 FROM crash_group_members m
                                    WHERE m.coredump_id = candidates.id OFFSET 0))
                 ),
                 reserved AS (
                     SELECT id FROM candidates
                     WHERE NOT EXISTS (SELECT 1 FROM coredumps c
                                       WHERE c.id = candidates.id OFFSET 0)
                       AND NOT EXISTS (SELECT 1 FROM crash_group_members m
                                       WHERE m.coredump_id = candidates.id OFFSET 0)
                 ),
                 cancelled AS (
                     DELETE FROM object_deletions
                     WHERE object_key = $1 || (SELECT id FROM reserved) || $2
                 )
                 SELECT id FROM reserved",
            )
            .bind(prefix)
            .bind(suffix)
            .bind(ID_CANDIDATES)
            .fetch_optional(pool)
            .await?;
            reserved.ok_or_else(|| {
                DbError::Other(sqlx::Error::Protocol(format!(
                    "the core-dump id sequence is behind the table: {ID_CANDIDATES} ids in a row \
                     are in use (each upload moves it on; or set it past MAX(coredumps.id))"
                )))
            })
        }
        Db::Sqlite(_) => Err(DbError::Other(sqlx::Error::Protocol(
            "SQLite has no sequences to reserve a core-dump id from".into(),
        ))),
    }
}

/// Serialises the writers of one device's dumps: uploads (with their retention), admin deletions
/// and the device's own deletion. On PostgreSQL two uploads would otherwise each delete
/// "everything beyond the newest N" from their own snapshot and could lock the same old rows in
/// different orders (an admin's delete-all likewise); a device deletion would list the dumps
/// without one still being committed, whose row the cascade then removes with no outbox entry
/// for its object. `FOR NO KEY UPDATE` does not conflict with the key-share lock the coredumps
/// foreign key already took, so it cannot deadlock with it. SQLite serialises writers anyway.
pub async fn lock_device_dumps(tx: &mut Tx, device_id: i64) -> Result<(), DbError> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT id FROM devices WHERE id = $1 FOR NO KEY UPDATE")
            .bind(device_id)
            .execute(&mut **t)
            .await?;
    }
    Ok(())
}

/// Deletes the device's dumps beyond the newest `keep` (at least 1: `MAX_COREDUMPS` is positive;
/// by `uploaded_at`, then id) and returns the ids deleted, with their parse generations (whose
/// queued parse the caller withdraws), whose objects the caller schedules for deletion. Dump
/// `spared` (the upload's own) counts as the newest whatever its time: a process whose clock is
/// behind the others' must not prune the dump it was just given and answer 201 with an id that is
/// gone.
///
/// The device's `coredump_count` (kept by triggers, migration 24) says how many are beyond
/// `keep`, and only that many of the oldest others are read, through
/// `ix_coredumps_device_id_uploaded_at_id`: a device within its limit costs one primary-key
/// lookup, not a read of every dump it holds (2.5 ms per upload with ~570 dumps a device). The
/// count is trusted to find dumps, never to delete them: a dump among the device's newest `keep`
/// stays whatever the count says (when pruning, the newest are read to check). A count that
/// drifted (triggers bypassed by hand) can only make retention prune fewer, until `reconcile
/// --repair` recounts it.
pub async fn delete_beyond(
    tx: &mut Tx,
    device_id: i64,
    keep: i64,
    spared: i64,
) -> Result<Vec<(i64, i64)>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "DELETE FROM coredumps WHERE id IN (
             SELECT id FROM (
                 SELECT id FROM coredumps WHERE device_id = $1 AND id <> $3
                 ORDER BY uploaded_at, id
                 LIMIT COALESCE((SELECT coredump_count - $2 FROM devices
                                 WHERE id = $1 AND coredump_count > $2), 0)
             ) AS oldest
             WHERE id NOT IN (
                 SELECT id FROM coredumps WHERE device_id = $1 AND id <> $3
                 ORDER BY uploaded_at DESC, id DESC
                 LIMIT $2 - (SELECT COUNT(*) FROM coredumps WHERE id = $3 AND device_id = $1)))
         RETURNING id, parse_generation"
    )
    .bind(device_id)
    .bind(keep)
    .bind(spared)
    .fetch_all(c)
    .await)?)
}

/// A device whose `coredump_count` disagrees with a count of its dumps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DumpCountDrift {
    pub device_id: i64,
    pub device_key: String,
    pub kept: i64,
    pub counted: i64,
}

/// Devices whose `coredump_count` (kept by triggers, migration 24) disagrees with a count of
/// their dumps, for `reconcile` (reads every dump's index entry). One statement: one snapshot.
pub async fn count_drift(db: &Db) -> Result<Vec<DumpCountDrift>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as(
        "SELECT d.id AS device_id, d.key AS device_key, d.coredump_count AS kept,
                CAST(COALESCE(c.dumps, 0) AS BIGINT) AS counted
         FROM devices d
         LEFT JOIN (SELECT device_id, COUNT(*) AS dumps FROM coredumps GROUP BY device_id) c
             ON c.device_id = d.id
         WHERE d.coredump_count <> COALESCE(c.dumps, 0)
         ORDER BY d.key"
    )
    .fetch_all(p)
    .await)?)
}

/// Sets the device's `coredump_count` to a count of its dumps, under its retention lock
/// ([`lock_device_dumps`]: every writer of a device's dumps takes it first, so none is added or
/// deleted meanwhile, and the lock order is theirs). Whether it changed.
pub async fn recount(db: &Db, device_id: i64) -> Result<bool, DbError> {
    let mut tx = db.begin().await?;
    lock_device_dumps(&mut tx, device_id).await?;
    let changed = crate::execute!(
        &mut tx,
        sqlx::query(
            "UPDATE devices SET coredump_count =
                 (SELECT COUNT(*) FROM coredumps c WHERE c.device_id = devices.id)
             WHERE id = $1 AND coredump_count <>
                 (SELECT COUNT(*) FROM coredumps c WHERE c.device_id = devices.id)"
        )
        .bind(device_id)
    )?;
    tx.commit().await?;
    Ok(changed > 0)
}

/// What an upload writes besides its row once the object is stored: the outbox entries of the
/// dumps retention pruned, the withdrawal of their queued parse jobs, the new dump's parse job and
/// its events. Each text is made by the module that owns its table (outbox keys,
/// `jobs::payload_text`, `events`).
pub struct UploadRecord<'a> {
    pub now: chrono::DateTime<chrono::Utc>,
    pub deletions: &'a [crate::storage::ObjectKey],
    pub job_kind: &'a str,
    pub withdrawn_job_payloads: &'a [String],
    pub job_payload: &'a str,
    pub job_max_attempts: i32,
    pub event_kind: &'a str,
    pub event_payload: &'a str,
    /// A second event (the dumps retention pruned), when there is one.
    pub pruned_event: Option<(&'a str, &'a str)>,
    pub notify_channel: &'a str,
}

/// Writes an [`UploadRecord`] in one statement, one round trip instead of five (outbox entries,
/// job withdrawal, job, event, `pg_notify`): the same rows `outbox::schedule_deletion`,
/// `jobs::cancel_queued`, `jobs::enqueue` and `events::record` write, which SQLite (in-process,
/// no round trips to save, and no data-modifying CTEs) still uses. Returns how many queued jobs
/// were withdrawn.
///
/// Two texts, by whether there are jobs to withdraw (a device at `MAX_COREDUMPS`), each a
/// prepared statement of its own. With one text for both, PostgreSQL plans the withdrawal from
/// the statistics of the jobs table: a generic plan costs a scan of every job even when nothing
/// is withdrawn, so it kept planning every execution anew (0.33 ms of its CPU per upload, 6 % of
/// all it spent per dump at 250 uploads/s), and with the statistics of a nearly empty table a
/// generic plan did scan every job (41 ms per upload at 11,000 queued). Without a withdrawal the
/// statement never reads the jobs table; with one, its plan still depends on the statistics,
/// which the job runner refreshes while a backlog lasts (`jobs::worker`).
pub async fn record_upload_postgres(
    conn: &mut sqlx::PgConnection,
    record: &UploadRecord<'_>,
) -> Result<i64, DbError> {
    // The writes and the notification, shared by both texts (`concat!` takes only literals).
    macro_rules! writes {
        () => {
            "deletions AS (
                 INSERT INTO object_deletions (object_key, next_attempt_at, created_at)
                 SELECT key, $1, $1 FROM UNNEST($2::text[]) AS key
             ), job AS (
                 INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at)
                 VALUES ($3, $5, $6, $1, $1, $1)
             ), event AS (
                 INSERT INTO events (type, payload, created_at) VALUES ($7, $8, $1) RETURNING id
             ), pruned_event AS (
                 INSERT INTO events (type, payload, created_at)
                 SELECT $10, $11, $1 WHERE $10::text IS NOT NULL RETURNING id
             )"
        };
    }
    macro_rules! notify {
        () => {
            " FROM (SELECT pg_notify($9, (SELECT MAX(id)::text FROM (
                 SELECT id FROM event UNION ALL SELECT id FROM pruned_event) AS ids))) AS notified"
        };
    }
    // `$4` is bound either way, so both texts take the same parameters.
    const WITHOUT_WITHDRAWAL: &str = concat!(
        "WITH ",
        writes!(),
        " SELECT CAST(cardinality($4::text[]) AS BIGINT) * 0",
        notify!()
    );
    const WITH_WITHDRAWAL: &str = concat!(
        "WITH withdrawn AS (
             DELETE FROM jobs WHERE kind = $3 AND status = 'queued' AND payload = ANY($4::text[])
             RETURNING 1
         ), ",
        writes!(),
        " SELECT (SELECT COUNT(*) FROM withdrawn)",
        notify!()
    );
    let deletions: Vec<&str> = record.deletions.iter().map(|k| k.as_str()).collect();
    let sql = if record.withdrawn_job_payloads.is_empty() {
        WITHOUT_WITHDRAWAL
    } else {
        WITH_WITHDRAWAL
    };
    Ok(sqlx::query_scalar(sql)
        .bind(record.now)
        .bind(&deletions)
        .bind(record.job_kind)
        .bind(record.withdrawn_job_payloads)
        .bind(record.job_payload)
        .bind(record.job_max_attempts)
        .bind(record.event_kind)
        .bind(record.event_payload)
        .bind(record.notify_channel)
        .bind(record.pruned_event.map(|(kind, _)| kind))
        .bind(record.pruned_event.map(|(_, payload)| payload))
        .fetch_one(conn)
        .await?)
}

/// A device's dumps, newest first; with `limit`, at most that many after the position `after`
/// (`uploaded_at`, `id` of the last dump of the previous page).
pub async fn list(
    tx: &mut Tx,
    device_id: i64,
    after: Option<(DateTime<Utc>, i64)>,
    limit: Option<u32>,
) -> Result<Vec<CoredumpRow>, DbError> {
    let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let (after_at, after_id) = after.unzip();
    let sql = format!(
        "{SELECT} WHERE c.device_id = $1
           AND ($2 IS NULL OR c.uploaded_at < $2 OR (c.uploaded_at = $2 AND c.id < $3))
         ORDER BY c.uploaded_at DESC, c.id DESC{limit}"
    );
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, CoredumpRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(device_id)
    .bind(after_at)
    .bind(after_id)
    .fetch_all(c)
    .await)?)
}

/// One dump of one device.
pub async fn get(tx: &mut Tx, device_id: i64, id: i64) -> Result<Option<CoredumpRow>, DbError> {
    let sql = format!("{SELECT} WHERE c.id = $1 AND c.device_id = $2");
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, CoredumpRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .bind(device_id)
    .fetch_optional(c)
    .await)?)
}

/// Deletes one dump of one device; false if there was none.
pub async fn delete(tx: &mut Tx, device_id: i64, id: i64) -> Result<bool, DbError> {
    let rows = crate::execute!(
        tx,
        sqlx::query("DELETE FROM coredumps WHERE id = $1 AND device_id = $2")
            .bind(id)
            .bind(device_id)
    )?;
    Ok(rows == 1)
}

/// Deletes all dumps of a device and returns their ids.
pub async fn delete_all(tx: &mut Tx, device_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "DELETE FROM coredumps WHERE device_id = $1 RETURNING id"
    )
    .bind(device_id)
    .fetch_all(c)
    .await)?)
}

/// Puts a dump back to `PENDING` (for a reparse), clearing the previous result, and starts its
/// next parse generation. Returns that generation (`None` if there is no such dump): only a parse
/// job carrying it may record the next result (see [`record_result`]).
pub async fn reset_to_pending(
    tx: &mut Tx,
    device_id: i64,
    id: i64,
) -> Result<Option<i64>, DbError> {
    let now = now();
    // Pending again: like an upload, it holds its version's lock shared until the commit, so a
    // firmware retention in flight waits for it before it decides (see `lock_device_and_insert`).
    if let Tx::Postgres(t) = tx {
        sqlx::query(
            "SELECT pg_advisory_xact_lock_shared($1, hashtext(d.device_model_id::text || '/' || c.firmware_version))
             FROM coredumps c JOIN devices d ON d.id = c.device_id
             WHERE c.id = $2 AND c.device_id = $3",
        )
        .bind(crate::db::firmware_versions::VERSION_LOCK_CLASS)
        .bind(id)
        .bind(device_id)
        .fetch_all(&mut **t)
        .await?;
    }
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "UPDATE coredumps SET parse_status = 'PENDING', parsed_output = NULL, report = NULL,
                              parsed_at = NULL, updated_at = $1,
                              parse_generation = parse_generation + 1
         WHERE id = $2 AND device_id = $3
         RETURNING parse_generation"
    )
    .bind(now)
    .bind(id)
    .bind(device_id)
    .fetch_optional(c)
    .await)?)
}

/// What a parse job needs to know about its dump.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParseTarget {
    pub id: i64,
    pub chip: String,
    pub firmware_version: String,
    pub device_key: String,
    pub model_code: String,
    pub device_id: i64,
    pub device_model_id: i64,
    pub uploaded_at: DateTime<Utc>,
    /// The SHA-256 of the firmware ELF of the dump's model and version, as its `firmware_versions`
    /// row records it (`None` without such a row, or for legacy rows).
    pub elf_sha256: Option<String>,
    /// The dump's parse generation: a job that carries an older one was superseded by a reparse.
    pub parse_generation: i64,
}

/// The dump a parse job works on, with its device's key and model code and the recorded hash of
/// its build's ELF; `None` if it was deleted.
pub async fn parse_target(db: &Db, id: i64) -> Result<Option<ParseTarget>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, ParseTarget>(
        "SELECT c.id, c.chip, c.firmware_version, d.key AS device_key, m.code AS model_code,
                c.device_id, d.device_model_id, c.uploaded_at, f.firmware_elf_sha256 AS elf_sha256,
                c.parse_generation
         FROM coredumps c
         JOIN devices d ON d.id = c.device_id
         JOIN device_models m ON m.id = d.device_model_id
         LEFT JOIN firmware_versions f
                ON f.device_model_id = d.device_model_id AND f.version = c.firmware_version
         WHERE c.id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// Records a finished parse: `PARSED` (with the text and, from the built-in parser, the
/// structured report) or `ERROR` (with the reason in `parsed_output`), on a dump still `PENDING`
/// in the parse `generation` the job started with. Returns false when the row is gone (deleted
/// while the job ran), has its result already, or was reparsed since: a parse that finishes late
/// (its job was run again after its result was committed, or it was in flight when a reparse was
/// asked for) never overwrites a newer result nor takes the place of the reparse.
pub async fn record_result(
    tx: &mut Tx,
    id: i64,
    generation: i64,
    status: &str,
    output: &str,
    report: Option<&str>,
) -> Result<bool, DbError> {
    let now = now();
    let rows = on_conn!(tx, |c| {
        sqlx::query(
            "UPDATE coredumps SET parse_status = $1, parsed_output = $2, report = $3, parsed_at = $4,
                                  updated_at = $4
             WHERE id = $5 AND parse_status = 'PENDING' AND parse_generation = $6",
        )
        .bind(status)
        .bind(output)
        .bind(report)
        .bind(now)
        .bind(id)
        .bind(generation)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(rows == 1)
}
