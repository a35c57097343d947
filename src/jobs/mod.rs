//! The durable job queue (SPEC §4, §8): a `jobs` table that every `serve` process shares.
//!
//! A job is enqueued inside the transaction that creates the data it works on, so it can never be
//! claimed before that data is committed and it survives restarts. Workers claim one job at a time
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers), keep a heartbeat while
//! they work, and finish with one of the outcomes of [`JobOutcome`]. A job whose worker stopped
//! heartbeating for longer than the lease (the process died) is claimed again by another worker.
//!
//! Architecture invariant: no job state lives in process memory; everything another process needs
//! is in the table.

pub mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{self, Db, DbError, Tx};
use crate::on_conn;

/// A claimed job, as a handler sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    /// Including the current attempt.
    pub attempts: i32,
    pub max_attempts: i32,
    /// The runner whose claim this is (see [`complete_in`]).
    pub claimed_by: String,
}

impl Job {
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }
}

/// How one run of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Done: the job row is deleted.
    Completed,
    /// Done, and the handler ended the job itself with [`complete_in`] in the transaction that
    /// recorded its work (which deleted the row, unless the claim was lost meanwhile): one round
    /// trip and one transaction fewer per job, and the work and the job's end commit together.
    /// The runner does nothing more.
    CompletedInTransaction,
    /// A transient failure: run again after the delay (until attempts are exhausted).
    Retry { after: Duration, error: String },
    /// A permanent failure: the job is marked failed and kept for inspection.
    Abort { error: String },
}

/// A job row as stored, for inspection by tests and operators.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub last_error: Option<String>,
}

/// Adds a job in the caller's transaction; it becomes claimable when that transaction commits.
pub async fn enqueue<T: Serialize>(
    tx: &mut Tx,
    kind: &str,
    payload: &T,
    max_attempts: i32,
) -> Result<i64, DbError> {
    let payload = payload_text(payload)?;
    let now = db::now();
    let id: i64 = on_conn!(tx, |c| sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4, $4) RETURNING id"
    )
    .bind(kind)
    .bind(&payload)
    .bind(max_attempts)
    .bind(now)
    .fetch_one(c)
    .await)?;
    Ok(id)
}

/// A payload as the `payload` column stores it. [`enqueue`] and [`cancel_queued`] use it, and so
/// must anything that writes or matches job rows in a statement of its own (the core-dump upload
/// does both in one round trip, `crate::db::coredumps::record_upload_postgres`): withdrawing a
/// job compares these texts.
pub fn payload_text<T: Serialize>(payload: &T) -> Result<String, DbError> {
    serde_json::to_string(payload).map_err(|e| DbError::Other(sqlx::Error::Encode(Box::new(e))))
}

/// Withdraws queued (not running, not failed) jobs of `kind` whose payload is one of `payloads`,
/// in the caller's transaction, e.g. the parse jobs of dumps that are being deleted. Returns how
/// many were withdrawn. A job already running is left to find its data gone.
pub async fn cancel_queued<T: Serialize>(
    tx: &mut Tx,
    kind: &str,
    payloads: &[T],
) -> Result<u64, DbError> {
    let mut cancelled = 0;
    for payload in payloads {
        // Payloads are written by `enqueue` with the same serialisation, so equal values are
        // equal texts.
        let payload = payload_text(payload)?;
        cancelled += crate::execute!(
            tx,
            sqlx::query("DELETE FROM jobs WHERE kind = $1 AND payload = $2 AND status = 'queued'")
                .bind(kind)
                .bind(&payload)
        )?;
    }
    Ok(cancelled)
}

// Jobs whose worker stopped heartbeating first, then due ones, oldest first. Two index scans (a
// few running rows; the queued ones in run_at order, stopping after $5): one scan with
// `(queued AND due) OR (running AND stale)` read and sorted the whole backlog on every claim
// (10 ms per claim with 10,000 queued).
const CLAIM_POSTGRES: &str = "
WITH stale AS (
    SELECT id FROM jobs
    WHERE status = 'running' AND heartbeat_at < $4 AND kind = ANY($3)
    ORDER BY run_at, id LIMIT $5
    FOR UPDATE SKIP LOCKED),
due AS (
    SELECT id FROM jobs
    WHERE status = 'queued' AND run_at <= $2 AND kind = ANY($3)
    ORDER BY run_at, id LIMIT $5
    FOR UPDATE SKIP LOCKED)
UPDATE jobs SET status = 'running', attempts = attempts + 1, claimed_by = $1,
                heartbeat_at = $2, updated_at = $2
WHERE id IN (SELECT id FROM (SELECT id FROM stale UNION ALL SELECT id FROM due) c LIMIT $5)
RETURNING id, kind, payload, attempts, max_attempts, claimed_by";

// SQLite has no row locks; its single writer makes this UPDATE … WHERE id IN (SELECT …) atomic.
const CLAIM_SQLITE: &str = "
UPDATE jobs SET status = 'running', attempts = attempts + 1, claimed_by = $1,
                heartbeat_at = $2, updated_at = $2
WHERE id IN (
    SELECT id FROM (
        SELECT id FROM jobs
        WHERE status = 'running' AND heartbeat_at < $4
          AND kind IN (SELECT value FROM json_each($3))
        ORDER BY run_at, id LIMIT $5)
    UNION ALL
    SELECT id FROM (
        SELECT id FROM jobs
        WHERE status = 'queued' AND run_at <= $2
          AND kind IN (SELECT value FROM json_each($3))
        ORDER BY run_at, id LIMIT $5)
    LIMIT $5)
RETURNING id, kind, payload, attempts, max_attempts, claimed_by";

/// Refreshes the query planner's statistics of the jobs table (PostgreSQL: `ANALYZE jobs`;
/// SQLite plans the claim by its index without them). A table that its statistics still
/// describe as empty gets its claims planned as a read of every queued job (see
/// `worker`'s module documentation). On SQLite there is nothing to do (true). Returns false when
/// it did not run: another process is
/// refreshing them (one at a time, by an advisory lock), or the table was locked for more than
/// 100 ms (a `VACUUM`, a schema change: the refresh never queues behind them holding a pooled
/// connection, nor makes PostgreSQL cancel an autovacuum it waits for). A database user that does
/// not own the table gets a warning from PostgreSQL, not an error, and the statistics stay as
/// they were.
pub async fn refresh_statistics(db: &Db) -> Result<bool, DbError> {
    let Db::Postgres(_) = db else {
        return Ok(true);
    };
    let mut tx = db.begin().await?;
    let crate::db::Tx::Postgres(t) = &mut tx else {
        return Ok(false);
    };
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(STATISTICS_LOCK)
        .fetch_one(&mut **t)
        .await?;
    if !locked {
        return Ok(false);
    }
    sqlx::query("SET LOCAL lock_timeout = '100ms'")
        .execute(&mut **t)
        .await?;
    match sqlx::query("ANALYZE jobs").execute(&mut **t).await {
        Ok(_) => {}
        // 55P03: lock_not_available, the lock timeout.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(true)
}

/// The advisory lock held while one process refreshes the jobs table's statistics ("iotjstat").
const STATISTICS_LOCK: i64 = 0x696f_746a_7374_6174;

/// Claims the next due job of one of `kinds` for `worker`, including jobs whose previous worker
/// stopped heartbeating more than `lease` ago.
pub async fn claim(
    db: &Db,
    worker: &str,
    kinds: &[&str],
    lease: Duration,
) -> Result<Option<Job>, DbError> {
    Ok(claim_many(db, worker, kinds, lease, 1).await?.pop())
}

/// Claims up to `limit` due jobs at once (see [`claim`]), oldest first, in one statement.
pub async fn claim_many(
    db: &Db,
    worker: &str,
    kinds: &[&str],
    lease: Duration,
    limit: usize,
) -> Result<Vec<Job>, DbError> {
    let now = db::now();
    let stale_before = now - chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let mut jobs = match db {
        Db::Postgres(p) => {
            let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
            sqlx::query_as::<_, Job>(CLAIM_POSTGRES)
                .bind(worker)
                .bind(now)
                .bind(kinds)
                .bind(stale_before)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
        Db::Sqlite(p) => {
            let kinds = serde_json::to_string(kinds).unwrap_or_else(|_| "[]".into());
            sqlx::query_as::<_, Job>(CLAIM_SQLITE)
                .bind(worker)
                .bind(now)
                .bind(kinds)
                .bind(stale_before)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
    };
    // RETURNING gives no order.
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

/// Tells other workers the job is still being worked on. Returns false when the claim was lost
/// (another worker took the job over), in which case the caller should stop.
///
/// A claim is named by the worker and the attempt it started (`attempts`, which every claim
/// increments): a worker whose heartbeats failed for longer than the lease (the database was
/// away) may claim its own job again as stale, and the first run must then find its claim lost
/// rather than run on beside the second, both settling the row.
pub async fn heartbeat(db: &Db, job: &Job, worker: &str) -> Result<bool, DbError> {
    let now = db::now();
    let rows = crate::on_pool!(db, |p| {
        sqlx::query(
            "UPDATE jobs SET heartbeat_at = $1
             WHERE id = $2 AND status = 'running' AND claimed_by = $3 AND attempts = $4",
        )
        .bind(now)
        .bind(job.id)
        .bind(worker)
        .bind(job.attempts)
        .execute(p)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(rows == 1)
}

/// Gives back every job `worker` still holds (its process is stopping and cut them off): queued
/// again, due now, the cut attempt not counted. How many.
pub async fn release_claims(db: &Db, worker: &str) -> Result<u64, DbError> {
    let now = db::now();
    Ok(crate::on_pool!(db, |p| sqlx::query(
        "UPDATE jobs SET status = 'queued', claimed_by = NULL, heartbeat_at = NULL,
                         attempts = attempts - 1, run_at = $1, updated_at = $1
         WHERE status = 'running' AND claimed_by = $2"
    )
    .bind(now)
    .bind(worker)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Deletes a completed job, if it is still the claim's holder's in the attempt it claimed:
/// [`finish`] from the pool, [`complete_in`] in the handler's transaction.
const END_COMPLETED: &str = "DELETE FROM jobs WHERE id = $1 AND claimed_by = $2 AND attempts = $3";

/// Ends a job that is done, in the caller's transaction: the handler's, which records the job's
/// work (then it returns [`JobOutcome::CompletedInTransaction`]). As [`finish`], only the claim's
/// holder in the attempt it claimed ends the job; a claim lost meanwhile (another runner took the
/// job over) leaves the row to that runner.
pub async fn complete_in(tx: &mut Tx, job: &Job) -> Result<(), DbError> {
    crate::execute!(
        tx,
        sqlx::query(END_COMPLETED)
            .bind(job.id)
            .bind(&job.claimed_by)
            .bind(job.attempts)
    )?;
    Ok(())
}

/// Records the outcome of a run. Only the claim's holder can finish the job (the worker, in the
/// attempt it claimed: see [`heartbeat`]).
pub async fn finish(db: &Db, job: &Job, worker: &str, outcome: &JobOutcome) -> Result<(), DbError> {
    let now = db::now();
    match outcome {
        JobOutcome::CompletedInTransaction => {}
        JobOutcome::Completed => {
            crate::on_pool!(db, |p| sqlx::query(END_COMPLETED)
                .bind(job.id)
                .bind(worker)
                .bind(job.attempts)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))?;
        }
        JobOutcome::Retry { after, error } if job.attempts < job.max_attempts => {
            let run_at = now + chrono::Duration::from_std(*after).unwrap_or(chrono::Duration::MAX);
            crate::on_pool!(db, |p| {
                sqlx::query(
                "UPDATE jobs SET status = 'queued', run_at = $1, last_error = $2, claimed_by = NULL,
                        heartbeat_at = NULL, updated_at = $3
                 WHERE id = $4 AND claimed_by = $5 AND attempts = $6"
            )
            .bind(run_at)
            .bind(error)
            .bind(now)
            .bind(job.id)
            .bind(worker)
            .bind(job.attempts)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            })?;
        }
        JobOutcome::Retry { error, .. } | JobOutcome::Abort { error } => {
            crate::on_pool!(db, |p| sqlx::query(
                "UPDATE jobs SET status = 'failed', last_error = $1, claimed_by = NULL,
                        heartbeat_at = NULL, updated_at = $2
                 WHERE id = $3 AND claimed_by = $4 AND attempts = $5"
            )
            .bind(error)
            .bind(now)
            .bind(job.id)
            .bind(worker)
            .bind(job.attempts)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        }
    }
    Ok(())
}

/// All job rows, oldest first (for tests and operators).
pub async fn list(db: &Db) -> Result<Vec<JobRecord>, DbError> {
    Ok(crate::on_pool!(db, |p| sqlx::query_as::<_, JobRecord>(
        "SELECT id, kind, payload, status, attempts, max_attempts, run_at, claimed_by, last_error
         FROM jobs ORDER BY id"
    )
    .fetch_all(p)
    .await)?)
}

/// Exponential backoff for retries: 2 s, 4 s, 8 s … capped at 5 minutes.
pub fn backoff(attempt: i32) -> Duration {
    let exp = attempt.clamp(1, 20) as u32;
    Duration::from_secs(2u64.saturating_pow(exp)).min(Duration::from_secs(300))
}

/// Queue depth and the age of the oldest due job, per kind (for the metrics endpoint).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueStats {
    pub kind: String,
    pub queued: i64,
    pub oldest_run_at: Option<DateTime<Utc>>,
}

pub async fn queue_stats(db: &Db) -> Result<Vec<QueueStats>, DbError> {
    let now = db::now();
    Ok(crate::on_pool!(db, |p| {
        sqlx::query_as::<_, QueueStats>(
        "SELECT kind, COUNT(*) AS queued, MIN(CASE WHEN run_at <= $1 THEN run_at END) AS oldest_run_at
         FROM jobs WHERE status = 'queued' GROUP BY kind"
    )
    .bind(now)
    .fetch_all(p)
    .await
    })?)
}
