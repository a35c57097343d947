//! The one-off `group_coredumps` job: puts the dumps parsed before crash groups existed into
//! their groups. Migration 10 queues it when there are parsed dumps with a structured report.
//!
//! It works through parsed dumps with a report and no ledger entry in id order, a batch at a
//! time: the signatures of a batch are computed from the stored reports (on a blocking thread),
//! then each dump is grouped in a transaction of its own, which locks the dump's row and checks
//! that it is still the same parse result (a reparse since then is grouped by its own job) and
//! that it has no group yet (the parse job may have grouped it meanwhile). A crash or a retry
//! starts over from the first ungrouped dump: what was committed is not done twice, so the job
//! resumes where it stopped. One transaction per dump, like the parse job, keeps every
//! transaction to one dump row and at most two group rows locked in id order, so the backfill and
//! the parse workers never deadlock. Progress is logged per batch (`crash_group_backfill_batch`).
//! Dumps whose report cannot be read or gives no signature are skipped (and counted).

use std::time::Duration;

use esp_coredump::{CrashReport, CrashSignature};

use crate::db::crash_groups::{self as db_groups, Ungrouped};
use crate::db::{Db, DbError};
use crate::jobs::worker::JobHandler;
use crate::jobs::{self, Job, JobOutcome};

pub const BACKFILL_JOB: &str = "group_coredumps";
/// Dumps read (and signed) at a time.
pub const DEFAULT_BATCH: i64 = 100;

/// The `group_coredumps` job handler.
pub struct GroupCoredumps {
    pub db: Db,
    pub batch: i64,
}

impl GroupCoredumps {
    pub fn new(db: Db) -> Self {
        GroupCoredumps {
            db,
            batch: DEFAULT_BATCH,
        }
    }
}

/// Queues a backfill in its own transaction (the migration queues the first one).
pub async fn enqueue(db: &Db) -> Result<i64, DbError> {
    let mut tx = db.begin().await?;
    let id = jobs::enqueue(&mut tx, BACKFILL_JOB, &serde_json::json!({}), 20).await?;
    tx.commit().await?;
    Ok(id)
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Dumps read.
    pub read: usize,
    /// Dumps put into a group.
    pub grouped: usize,
    /// Dumps left alone: no signature, unreadable report, reparsed or grouped meanwhile.
    pub skipped: usize,
    /// The highest dump id read: the next batch starts after it.
    pub last_id: i64,
}

/// Groups up to `limit` ungrouped dumps with ids above `after`. `read == 0` means done.
pub async fn run_batch(db: &Db, after: i64, limit: i64) -> Result<BatchOutcome, DbError> {
    let mut tx = db.begin().await?;
    let dumps = db_groups::ungrouped(&mut tx, after, limit).await?;
    tx.commit().await?;
    let mut outcome = BatchOutcome {
        read: dumps.len(),
        last_id: dumps.last().map_or(after, |d| d.coredump_id),
        ..BatchOutcome::default()
    };
    let signed = tokio::task::spawn_blocking(move || {
        dumps
            .into_iter()
            .map(|d| {
                let signature = sign(&d);
                (d, signature)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| DbError::Other(sqlx::Error::Protocol(format!("signing failed: {e}"))))?;
    for (dump, signature) in signed {
        let Some(signature) = signature else {
            outcome.skipped += 1;
            continue;
        };
        if group_one(db, &dump, &signature).await? {
            outcome.grouped += 1;
        } else {
            outcome.skipped += 1;
        }
    }
    Ok(outcome)
}

/// The signature of a stored report; `None` (logged) when the report cannot be read.
fn sign(dump: &Ungrouped) -> Option<CrashSignature> {
    match serde_json::from_str::<CrashReport>(&dump.report) {
        Ok(report) => esp_coredump::crash_signature(&report),
        Err(e) => {
            tracing::warn!(coredump_id = dump.coredump_id, error = %e,
                "crash_group_backfill_unreadable_report");
            None
        }
    }
}

/// Groups one dump if it is still the parse result that was read and has no group yet.
async fn group_one(db: &Db, dump: &Ungrouped, signature: &CrashSignature) -> Result<bool, DbError> {
    let mut tx = db.begin().await?;
    if !db_groups::lock_parsed_dump(&mut tx, dump.coredump_id, dump.parsed_at).await?
        || db_groups::membership(&mut tx, dump.coredump_id)
            .await?
            .is_some()
    {
        return Ok(false);
    }
    let assigned = super::groups::assign(&mut tx, &dump.facts(), signature).await?;
    tx.commit().await?;
    super::groups::count_committed(&assigned.changes);
    Ok(true)
}

#[async_trait::async_trait]
impl JobHandler for GroupCoredumps {
    fn kind(&self) -> &'static str {
        BACKFILL_JOB
    }

    async fn run(&self, job: &Job) -> JobOutcome {
        let mut after = 0;
        let (mut grouped, mut skipped) = (0, 0);
        tracing::info!(
            job_id = job.id,
            attempt = job.attempts,
            "crash_group_backfill_started"
        );
        loop {
            match run_batch(&self.db, after, self.batch).await {
                Ok(batch) if batch.read == 0 => break,
                Ok(batch) => {
                    grouped += batch.grouped;
                    skipped += batch.skipped;
                    after = batch.last_id;
                    tracing::info!(
                        job_id = job.id,
                        batch_grouped = batch.grouped,
                        batch_skipped = batch.skipped,
                        grouped,
                        skipped,
                        last_coredump_id = after,
                        "crash_group_backfill_batch"
                    );
                }
                Err(e) => {
                    return JobOutcome::Retry {
                        after: Duration::from_secs(30),
                        error: format!("grouping stopped after dump {after}: {e}"),
                    }
                }
            }
        }
        tracing::info!(
            job_id = job.id,
            grouped,
            skipped,
            "crash_group_backfill_finished"
        );
        JobOutcome::Completed
    }
}
