//! The outbox of object deletions (golden rule 2, SPEC §4).
//!
//! A request that deletes rows calls [`schedule_deletion`] in the same transaction, commits, and is
//! done: it never waits for or fails on the object store. The outbox worker then deletes the
//! objects in batches, retrying with backoff, so a crash or an S3 outage only delays cleanup.
//!
//! Architecture invariant: a request that (re)creates an object calls [`cancel_deletions`] for its
//! keys inside its transaction *before* uploading. On PostgreSQL the worker holds row locks on the
//! entries it is processing until it has deleted the objects, so the cancel waits for an in-flight
//! deletion to finish and the new upload always lands after it; on SQLite writers are serialised.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::db::{self, Db, DbError, Tx};
use crate::on_conn;
use crate::storage::{ObjectKey, Storage};

/// One pending deletion, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingDeletion {
    pub id: i64,
    pub object_key: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Records that these objects must be deleted once the caller's transaction commits.
/// One statement (on SQLite one per [`db::BIND_CHUNK`] keys).
pub async fn schedule_deletion(tx: &mut Tx, keys: &[ObjectKey]) -> Result<(), DbError> {
    if keys.is_empty() {
        return Ok(());
    }
    let now = db::now();
    let t = match tx {
        Tx::Postgres(t) => {
            let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            sqlx::query(
                "INSERT INTO object_deletions (object_key, next_attempt_at, created_at)
                 SELECT key, $1, $1 FROM UNNEST($2::text[]) AS key",
            )
            .bind(now)
            .bind(&keys)
            .execute(&mut **t)
            .await?;
            return Ok(());
        }
        Tx::Sqlite(t) => t,
    };
    for chunk in keys.chunks(db::BIND_CHUNK) {
        // `$1` is the time; the keys are `$2` onwards.
        let sql = format!(
            "INSERT INTO object_deletions (object_key, next_attempt_at, created_at) VALUES {}",
            db::placeholder_list(2, chunk.len(), |p| format!("({p}, $1, $1)"))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for key in chunk {
            query = query.bind(key.as_str());
        }
        query.execute(&mut **t).await?;
    }
    Ok(())
}

/// Withdraws pending deletions of keys that the caller is about to write again.
/// One statement for all of them.
pub async fn cancel_deletions(tx: &mut Tx, keys: &[ObjectKey]) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM object_deletions WHERE object_key IN ({})",
        db::placeholder_list(1, keys.len(), |p| p)
    );
    // Only placeholders are formatted into the text; the keys are bound.
    Ok(crate::on_conn!(tx, |c| {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
        for key in keys {
            query = query.bind(key.as_str());
        }
        query.execute(c).await.map(|r| r.rows_affected())
    })?)
}

/// Every pending deletion, oldest first.
pub async fn pending(db: &Db) -> Result<Vec<PendingDeletion>, DbError> {
    Ok(crate::on_pool!(db, |p| {
        sqlx::query_as::<_, PendingDeletion>(
        "SELECT id, object_key, attempts, next_attempt_at, last_error FROM object_deletions ORDER BY id"
    )
    .fetch_all(p)
    .await
    })?)
}

/// What one pass of the worker did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxPass {
    pub deleted: usize,
    pub failed: usize,
}

const BATCH: i64 = 100;

const DUE_POSTGRES: &str = "SELECT id, object_key, attempts, next_attempt_at, last_error
     FROM object_deletions WHERE next_attempt_at <= $1 ORDER BY id LIMIT $2
     FOR UPDATE SKIP LOCKED";
const DUE_SQLITE: &str = "SELECT id, object_key, attempts, next_attempt_at, last_error
     FROM object_deletions WHERE next_attempt_at <= $1 ORDER BY id LIMIT $2";

/// Carries out one batch of due deletions. Callable from tests; the worker loops over it.
pub async fn process_due(db: &Db, storage: &Storage) -> Result<OutboxPass, DbError> {
    let now = db::now();
    // Look before taking a write transaction, so an idle worker never holds SQLite's write lock.
    let any_due: bool = crate::on_pool!(db, |p| sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM object_deletions WHERE next_attempt_at <= $1)"
    )
    .bind(now)
    .fetch_one(p)
    .await)?;
    if !any_due {
        return Ok(OutboxPass::default());
    }
    let mut tx = db.begin().await?;
    let due: Vec<PendingDeletion> = match &mut tx {
        Tx::Postgres(t) => {
            sqlx::query_as(DUE_POSTGRES)
                .bind(now)
                .bind(BATCH)
                .fetch_all(&mut **t)
                .await?
        }
        Tx::Sqlite(t) => {
            sqlx::query_as(DUE_SQLITE)
                .bind(now)
                .bind(BATCH)
                .fetch_all(&mut **t)
                .await?
        }
    };
    if due.is_empty() {
        return Ok(OutboxPass::default());
    }

    let mut pass = OutboxPass::default();
    let mut keys = Vec::with_capacity(due.len());
    let mut entries = Vec::with_capacity(due.len());
    for entry in due {
        match ObjectKey::parse(entry.object_key.clone()) {
            Ok(key) => {
                keys.push(key);
                entries.push(entry);
            }
            // A key that is not valid cannot name an object we wrote: drop the entry.
            Err(e) => {
                tracing::error!(object_key = %entry.object_key, error = %e, "outbox_invalid_key");
                delete_entry(&mut tx, entry.id).await?;
            }
        }
    }
    let results = storage.delete_many(&keys).await;
    // The retry delays count from now: a store that did not answer took its timeouts, and with
    // the time from before the call the entries were due again at once.
    let now = db::now();
    for (entry, result) in entries.iter().zip(results) {
        match result {
            Ok(()) => {
                delete_entry(&mut tx, entry.id).await?;
                pass.deleted += 1;
            }
            Err(e) => {
                let attempts = entry.attempts + 1;
                let next = now
                    + chrono::Duration::from_std(retry_delay(attempts))
                        .unwrap_or(chrono::Duration::MAX);
                tracing::warn!(object_key = %entry.object_key, attempts, error = %e, "outbox_delete_failed");
                on_conn!(&mut tx, |c| {
                    sqlx::query(
                    "UPDATE object_deletions SET attempts = $1, next_attempt_at = $2, last_error = $3
                     WHERE id = $4"
                )
                .bind(attempts)
                .bind(next)
                .bind(e.to_string())
                .bind(entry.id)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
                })?;
                pass.failed += 1;
            }
        }
    }
    tx.commit().await?;
    metrics::counter!(crate::telemetry::OUTBOX_DELETED).increment(pass.deleted as u64);
    metrics::counter!(crate::telemetry::OUTBOX_FAILED).increment(pass.failed as u64);
    if pass.deleted > 0 {
        tracing::info!(deleted = pass.deleted, failed = pass.failed, "outbox_pass");
    }
    Ok(pass)
}

async fn delete_entry(tx: &mut Tx, id: i64) -> Result<(), DbError> {
    crate::execute!(
        tx,
        sqlx::query("DELETE FROM object_deletions WHERE id = $1").bind(id)
    )?;
    Ok(())
}

/// Backoff between attempts at one deletion: 5 s, 10 s, 20 s … capped at 10 minutes.
pub fn retry_delay(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    Duration::from_secs(5u64.saturating_mul(2u64.saturating_pow(exp))).min(Duration::from_secs(600))
}

/// Whether the worker goes on with the next batch at once: after a full batch (more may be due),
/// unless all of it failed (the store is away): the next batch would wait out the same timeouts,
/// on SQLite holding the write lock all along.
fn another_batch_now(pass: &OutboxPass) -> bool {
    pass.deleted > 0 && pass.deleted + pass.failed >= BATCH as usize
}

/// On SQLite, how long the worker lets go of the database between two batches of a drain. A
/// batch holds SQLite's single write lock across its store request (the outbox invariant), and
/// writers waiting for it retry after sleeps of up to 100 ms (SQLite's busy handler): with the
/// next batch taking the lock again at once, a drain of thousands of keys would keep them out
/// until their busy timeout, failing uploads and job heartbeats. PostgreSQL locks rows, not the
/// database, and needs no pause.
const SQLITE_PAUSE_BETWEEN_BATCHES: Duration = Duration::from_millis(250);

/// How long to wait before the next batch of a drain (see [`SQLITE_PAUSE_BETWEEN_BATCHES`]).
pub(crate) fn pause_between_batches(db: &Db) -> Option<Duration> {
    matches!(db, Db::Sqlite(_)).then_some(SQLITE_PAUSE_BETWEEN_BATCHES)
}

/// Processes due deletions until `shutdown` fires.
pub async fn run_worker(db: Db, storage: Storage, poll: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let more = match process_due(&db, &storage).await {
            Ok(pass) => another_batch_now(&pass),
            Err(e) => {
                tracing::warn!(error = %e, "outbox_pass_failed");
                false
            }
        };
        if more {
            if let Some(pause) = pause_between_batches(&db) {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_batch_comes_at_once_after_a_full_one_unless_all_of_it_failed() {
        let pass = |deleted, failed| OutboxPass { deleted, failed };
        assert!(another_batch_now(&pass(100, 0)));
        assert!(another_batch_now(&pass(1, 99)));
        assert!(!another_batch_now(&pass(0, 100)), "the store is away");
        assert!(!another_batch_now(&pass(40, 0)), "nothing more is due");
    }

    #[tokio::test]
    async fn only_sqlite_lets_go_of_the_database_between_the_batches_of_a_drain() {
        let sqlite = Db::Sqlite(sqlx::sqlite::SqlitePool::connect_lazy("sqlite::memory:").unwrap());
        let postgres = Db::Postgres(
            sqlx::postgres::PgPool::connect_lazy("postgres://app@127.0.0.1/none").unwrap(),
        );
        // Longer than the longest sleep of SQLite's busy handler (100 ms), so that a writer
        // waiting for the lock gets it between two batches.
        assert!(pause_between_batches(&sqlite).is_some_and(|p| p > Duration::from_millis(100)));
        assert_eq!(pause_between_batches(&postgres), None);
    }
}
