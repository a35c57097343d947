//! Running jobs: "run one job" (callable from tests) and the loop that keeps up to
//! `JOB_CONCURRENCY` jobs running.
//!
//! The loop claims work whenever a slot is free: as many jobs as there are free slots, in one
//! statement, each started at once. While the last claim filled every slot it asked for (a
//! backlog), it waits for a quarter of the slots to be free before claiming again, so a drain
//! costs one claim per several jobs. A slot is freed the moment its job is finished, so a backlog
//! never waits for a poll interval. When nothing is due after it has run jobs, it polls again
//! after 10 ms, doubling the pause up to `WORKER_POLL_SECONDS` while the queue stays empty: right
//! after work (a stream of uploads) a new job waits milliseconds, an idle process (and one that
//! has not found work since it started) asks once per poll interval.
//!
//! While a backlog lasts, the loop refreshes the planner's statistics of the jobs table
//! ([`super::refresh_statistics`]) every 10 s (one refresh at a time, and none that would wait
//! for a lock on the table). The table is nearly empty most of the time, and
//! that is what its statistics say when a burst arrives (autovacuum analyses a table at most once
//! a minute, often later), and a statement's cached plan keeps what they said until they change:
//! PostgreSQL planned each claim as a read and sort of every queued job instead of a walk of the
//! queue's index that stops after the claim's limit (4.3 ms per claim with 5,000 queued,
//! `bench/parse_backlog.sh`, stop 31 in bench/README.md), and a core-dump upload's withdrawal of
//! pruned dumps' jobs as a scan of the whole table (41 ms at 11,000 queued), both growing with
//! the backlog.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{claim_many, finish, heartbeat, Job, JobOutcome};
use crate::db::{Db, DbError};
use crate::telemetry::{JOBS_FINISHED, JOBS_QUEUE_OP_DURATION};

/// The first pause after a poll that found nothing, once jobs have run.
const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(10);

/// The error of a run whose claim another worker took over (its lease ran out): that worker
/// decides what becomes of the job.
const CLAIM_LOST: &str = "claim lost to another worker";

/// How often a runner that yields to requests looks again whether it may start jobs.
const YIELD_PAUSE: Duration = Duration::from_millis(20);

/// How often a backlog makes the loop refresh the jobs table's statistics (an `ANALYZE` of a
/// table of 10,000 jobs took 80–140 ms of PostgreSQL's time on the benchmark machine).
const STATISTICS_REFRESH: Duration = Duration::from_secs(10);

/// The code behind one kind of job.
#[async_trait::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// The `kind` of the jobs this handler runs.
    fn kind(&self) -> &'static str;
    async fn run(&self, job: &Job) -> JobOutcome;

    /// Called before a job of this kind is marked failed for good, whatever ended it: its
    /// handler's last attempt, or workers that kept dying before they finished (then `run` never
    /// saw it), so that what the job was for is not left waiting. `Err` leaves the job claimed:
    /// its lease runs out and the next claim gives up again.
    async fn gave_up(&self, _job: &Job, _error: &str) -> Result<(), String> {
        Ok(())
    }
}

/// When the process's requests come first: `busy` says whether they are using it fully now, and
/// while it does, at most `limit` jobs run (jobs already running finish; no new ones start).
#[derive(Clone)]
pub struct Yield {
    pub busy: Arc<dyn Fn() -> bool + Send + Sync>,
    pub limit: usize,
}

/// Claims and runs jobs for a set of handlers.
#[derive(Clone)]
pub struct JobRunner {
    db: Db,
    handlers: Arc<HashMap<&'static str, Arc<dyn JobHandler>>>,
    worker_id: String,
    lease: Duration,
    yield_to: Option<Yield>,
}

impl JobRunner {
    pub fn new(db: Db, handlers: Vec<Arc<dyn JobHandler>>, lease: Duration) -> Self {
        let worker_id = worker_id(&hostname(), std::process::id());
        JobRunner {
            db,
            handlers: Arc::new(handlers.into_iter().map(|h| (h.kind(), h)).collect()),
            worker_id,
            lease,
            yield_to: None,
        }
    }

    /// Runs fewer jobs while `yield_to.busy()` (see [`Yield`]).
    pub fn yielding_to(mut self, yield_to: Yield) -> Self {
        self.yield_to = Some(yield_to);
        self
    }

    /// How many jobs may run now.
    fn allowed(&self, concurrency: usize) -> usize {
        match &self.yield_to {
            Some(y) if (y.busy)() => y.limit.clamp(1, concurrency),
            _ => concurrency,
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Claims one due job and runs it to an outcome. Returns the job and its outcome, or `None`
    /// when nothing is due. Kinds without a handler stay queued for a process that has one.
    pub async fn run_one(&self) -> Result<Option<(Job, JobOutcome)>, DbError> {
        let Some(job) = self.claim(1).await?.pop() else {
            return Ok(None);
        };
        self.run_claimed(job).await.map(Some)
    }

    /// Claims up to `limit` due jobs of the kinds this runner has handlers for.
    async fn claim(&self, limit: usize) -> Result<Vec<Job>, DbError> {
        let kinds: Vec<&str> = self.handlers.keys().copied().collect();
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let claimed = claim_many(&self.db, &self.worker_id, &kinds, self.lease, limit).await;
        metrics::histogram!(JOBS_QUEUE_OP_DURATION, "op" => "claim")
            .record(started.elapsed().as_secs_f64());
        claimed
    }

    /// Runs a job this runner claimed to an outcome and records it.
    async fn run_claimed(&self, job: Job) -> Result<(Job, JobOutcome), DbError> {
        let handler = self.handlers.get(job.kind.as_str());
        let outcome = if job.attempts > job.max_attempts {
            // Claimed again after its workers kept dying: stop trying.
            JobOutcome::Abort {
                error: format!(
                    "gave up after {} attempts: the worker stopped before finishing",
                    job.max_attempts
                ),
            }
        } else {
            match handler {
                Some(handler) => self.run_with_heartbeat(handler.as_ref(), &job).await,
                None => JobOutcome::Abort {
                    error: format!("no handler for job kind {}", job.kind),
                },
            }
        };
        let final_error = match &outcome {
            JobOutcome::Abort { error } => Some(error),
            JobOutcome::Retry { error, .. }
                if job.attempts >= job.max_attempts && error != CLAIM_LOST =>
            {
                Some(error)
            }
            _ => None,
        };
        if let (Some(handler), Some(error)) = (handler, final_error) {
            if let Err(e) = handler.gave_up(&job, error).await {
                tracing::warn!(job_id = job.id, kind = %job.kind, error = %e,
                    "job_give_up_failed");
                return Ok((job, outcome));
            }
        }
        match &outcome {
            JobOutcome::Completed | JobOutcome::CompletedInTransaction => {
                tracing::info!(job_id = job.id, kind = %job.kind, "job_completed")
            }
            JobOutcome::Retry { after, error } => tracing::warn!(
                job_id = job.id, kind = %job.kind, attempt = job.attempts,
                retry_in_secs = after.as_secs_f64(), error = %error, "job_retry"
            ),
            JobOutcome::Abort { error } => {
                tracing::error!(job_id = job.id, kind = %job.kind, error = %error, "job_failed")
            }
        }
        metrics::counter!(JOBS_FINISHED, "kind" => job.kind.clone(),
            "outcome" => outcome_label(&outcome))
        .increment(1);
        if outcome != JobOutcome::CompletedInTransaction {
            let started = Instant::now();
            let finished = finish(&self.db, &job, &self.worker_id, &outcome).await;
            metrics::histogram!(JOBS_QUEUE_OP_DURATION, "op" => "finish")
                .record(started.elapsed().as_secs_f64());
            finished?;
        }
        Ok((job, outcome))
    }

    async fn run_with_heartbeat(&self, handler: &dyn JobHandler, job: &Job) -> JobOutcome {
        let beat = async {
            let mut interval = tokio::time::interval(self.lease / 3);
            interval.tick().await;
            loop {
                interval.tick().await;
                match heartbeat(&self.db, job, &self.worker_id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job_id = job.id, "job_claim_lost");
                        return;
                    }
                    Err(e) => tracing::warn!(job_id = job.id, error = %e, "job_heartbeat_failed"),
                }
            }
        };
        // A handler that panics (a bug) ends its job at once, with the panic's message as the
        // job's error: uncaught, the job would only come back after its lease, and be given up
        // after `max_attempts` leases with nothing said.
        let run = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handler.run(job)));
        tokio::select! {
            // A handler whose answer is in reports it, rather than a heartbeat that found the job
            // gone in the same poll: a handler that ended the job in its own transaction
            // (`complete_in`) ended the claim with it. A heartbeat sent while that transaction
            // is open waits for it and can still answer first; then the run counts as a claim
            // lost (logged and counted as a retry; the job and the result are committed).
            biased;
            outcome = run => outcome.unwrap_or_else(|panic| {
                let message = panic_message(panic.as_ref());
                tracing::error!(job_id = job.id, kind = %job.kind, panic = %message,
                    "job_handler_panicked");
                JobOutcome::Abort {
                    error: format!("the job's handler failed unexpectedly (a bug): {message}"),
                }
            }),
            () = beat => JobOutcome::Retry {
                after: Duration::ZERO,
                error: CLAIM_LOST.into(),
            },
        }
    }

    /// Refreshes the jobs table's statistics in a task of its own (see the module documentation),
    /// unless the last refresh is still running (`refreshing`); a failure is logged and changes
    /// nothing else.
    fn refresh_statistics(
        &self,
        refreshing: &Arc<std::sync::atomic::AtomicBool>,
        shutdown: &CancellationToken,
    ) {
        use std::sync::atomic::Ordering;
        if refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (db, refreshing, shutdown) = (self.db.clone(), refreshing.clone(), shutdown.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            match super::refresh_statistics(&db).await {
                Ok(ran) => tracing::debug!(
                    ran,
                    took_ms = started.elapsed().as_millis() as u64,
                    "jobs_statistics_refreshed"
                ),
                // Stopping: the pool may be closing under it.
                Err(e) if shutdown.is_cancelled() => {
                    tracing::debug!(error = %e, "jobs_statistics_refresh_failed")
                }
                Err(e) => tracing::warn!(error = %e, "jobs_statistics_refresh_failed"),
            }
            refreshing.store(false, Ordering::Release);
        });
    }

    /// Runs jobs until `shutdown` fires, at most `concurrency` at a time (see the module
    /// documentation for when it looks for work). Jobs in progress at shutdown are finished before
    /// the worker returns.
    pub async fn run(self, concurrency: usize, poll: Duration, shutdown: CancellationToken) {
        let concurrency = concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut running = tokio::task::JoinSet::new();
        let mut pause = poll;
        // While the queue has more than the free slots take, claims wait for a batch of free
        // slots: one claim statement per job was most of PostgreSQL's work in a backlog drain
        // (2.5 ms per claim, see `refill_batch`).
        let batch = refill_batch(concurrency);
        let mut backlog = false;
        let mut statistics_refreshed: Option<Instant> = None;
        let refreshing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let wanted = if backlog { batch } else { 1 };
            let free = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                free = Arc::clone(&slots).acquire_many_owned(wanted) => free,
            };
            let Ok(mut free) = free else { break };
            // Every other free slot too, so one statement claims work for all of them.
            let more = slots.available_permits().min(concurrency);
            if let Ok(extra) = Arc::clone(&slots).try_acquire_many_owned(more as u32) {
                free.merge(extra);
            }
            while running.try_join_next().is_some() {}
            // While requests use the process fully, only `Yield::limit` jobs run: the slots
            // above it are given back for now and looked at again shortly.
            let busy = concurrency - free.num_permits();
            let allowed = self.allowed(concurrency).saturating_sub(busy);
            if allowed < free.num_permits() {
                drop(free.split(free.num_permits() - allowed));
            }
            if allowed == 0 {
                drop(free);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(YIELD_PAUSE) => {}
                }
                continue;
            }
            let asked = free.num_permits();
            match self.claim(asked).await {
                Ok(jobs) if !jobs.is_empty() => {
                    pause = FIRST_IDLE_PAUSE.min(poll);
                    backlog = jobs.len() == asked;
                    // A claim of one job that found one is no sign of a backlog.
                    if backlog
                        && asked >= 2
                        && statistics_refreshed.is_none_or(|at| at.elapsed() >= STATISTICS_REFRESH)
                    {
                        statistics_refreshed = Some(Instant::now());
                        self.refresh_statistics(&refreshing, &shutdown);
                    }
                    for job in jobs {
                        let Some(slot) = free.split(1) else { break };
                        let runner = self.clone();
                        running.spawn(async move {
                            if let Err(e) = runner.run_claimed(job).await {
                                tracing::warn!(error = %e, "job_finish_failed");
                            }
                            drop(slot);
                        });
                    }
                    continue;
                }
                Ok(_) => backlog = false,
                Err(e) => {
                    backlog = false;
                    tracing::warn!(error = %e, "job_claim_failed");
                    pause = poll;
                }
            }
            drop(free);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(poll);
        }
        while running.join_next().await.is_some() {}
    }
}

/// How many slots must be free before the next claim while a backlog lasts: a quarter of them
/// (8 of the default 32), so a drain makes one claim per eight jobs instead of one per job, and
/// at least three quarters of the slots stay busy. A claim's cost hardly depends on how many jobs
/// it takes: it walks the queue's index past the entries of jobs claimed before (dead until
/// vacuumed) and the ones other claims hold (with statistics that know of the backlog, see
/// the module documentation). With few slots, every free slot claims at once.
fn refill_batch(concurrency: usize) -> u32 {
    u32::try_from((concurrency / 4).max(1)).unwrap_or(1)
}

fn outcome_label(outcome: &JobOutcome) -> &'static str {
    match outcome {
        JobOutcome::Completed | JobOutcome::CompletedInTransaction => "completed",
        JobOutcome::Retry { .. } => "retry",
        JobOutcome::Abort { .. } => "failed",
    }
}

/// What names this runner's claims in `jobs.claimed_by` (`VARCHAR(100)` on PostgreSQL): the host's
/// name cut to 40 characters, the pid and a UUID. A longer host name (a 63-character pod name or
/// FQDN) made every claim fail there.
fn worker_id(host: &str, pid: u32) -> String {
    let host: String = host.chars().take(40).collect();
    format!("{host}-{pid}-{}", uuid::Uuid::new_v4().simple())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

/// What a panic said (its payload is a `&str` or a `String` when it was given a message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_id_fits_the_claim_column_whatever_the_host_name() {
        let longest = worker_id(&"h".repeat(253), u32::MAX);
        assert!(
            longest.len() <= 100,
            "{} characters: {longest}",
            longest.len()
        );
        assert!(longest.starts_with(&format!("{}-{}-", "h".repeat(40), u32::MAX)));
        assert_ne!(
            worker_id("host", 1),
            worker_id("host", 1),
            "two runners, one process"
        );
    }
}
