//! Running jobs: "run one job" (callable from tests) and the loop that waits for work.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{claim, finish, heartbeat, Job, JobOutcome};
use crate::db::{Db, DbError};

/// The code behind one kind of job.
#[async_trait::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// The `kind` of the jobs this handler runs.
    fn kind(&self) -> &'static str;
    async fn run(&self, job: &Job) -> JobOutcome;
}

/// Claims and runs jobs for a set of handlers.
#[derive(Clone)]
pub struct JobRunner {
    db: Db,
    handlers: Arc<HashMap<&'static str, Arc<dyn JobHandler>>>,
    worker_id: String,
    lease: Duration,
}

impl JobRunner {
    pub fn new(db: Db, handlers: Vec<Arc<dyn JobHandler>>, lease: Duration) -> Self {
        let worker_id = format!(
            "{}-{}-{}",
            hostname(),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        JobRunner {
            db,
            handlers: Arc::new(handlers.into_iter().map(|h| (h.kind(), h)).collect()),
            worker_id,
            lease,
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Claims one due job and runs it to an outcome. Returns the job and its outcome, or `None`
    /// when nothing is due. Kinds without a handler stay queued for a process that has one.
    pub async fn run_one(&self) -> Result<Option<(Job, JobOutcome)>, DbError> {
        let kinds: Vec<&str> = self.handlers.keys().copied().collect();
        if kinds.is_empty() {
            return Ok(None);
        }
        let Some(job) = claim(&self.db, &self.worker_id, &kinds, self.lease).await? else {
            return Ok(None);
        };
        let outcome = if job.attempts > job.max_attempts {
            // Claimed again after its workers kept dying: stop trying.
            JobOutcome::Abort {
                error: format!(
                    "gave up after {} attempts: the worker stopped before finishing",
                    job.max_attempts
                ),
            }
        } else {
            match self.handlers.get(job.kind.as_str()) {
                Some(handler) => self.run_with_heartbeat(handler.as_ref(), &job).await,
                None => JobOutcome::Abort {
                    error: format!("no handler for job kind {}", job.kind),
                },
            }
        };
        match &outcome {
            JobOutcome::Completed => {
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
        metrics::counter!(crate::telemetry::JOBS_FINISHED, "kind" => job.kind.clone(),
            "outcome" => outcome_label(&outcome))
        .increment(1);
        finish(&self.db, &job, &self.worker_id, &outcome).await?;
        Ok(Some((job, outcome)))
    }

    async fn run_with_heartbeat(&self, handler: &dyn JobHandler, job: &Job) -> JobOutcome {
        let beat = async {
            let mut interval = tokio::time::interval(self.lease / 3);
            interval.tick().await;
            loop {
                interval.tick().await;
                match heartbeat(&self.db, job.id, &self.worker_id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job_id = job.id, "job_claim_lost");
                        return;
                    }
                    Err(e) => tracing::warn!(job_id = job.id, error = %e, "job_heartbeat_failed"),
                }
            }
        };
        tokio::select! {
            outcome = handler.run(job) => outcome,
            () = beat => JobOutcome::Retry {
                after: Duration::ZERO,
                error: "claim lost to another worker".into(),
            },
        }
    }

    /// Runs jobs until `shutdown` fires, at most `concurrency` at a time, polling every `poll`
    /// when idle. A job in progress at shutdown is finished before the worker returns.
    pub async fn run(self, concurrency: usize, poll: Duration, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let runner = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                while !shutdown.is_cancelled() {
                    match runner.run_one().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "job_claim_failed"),
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(poll) => {}
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

fn outcome_label(outcome: &JobOutcome) -> &'static str {
    match outcome {
        JobOutcome::Completed => "completed",
        JobOutcome::Retry { .. } => "retry",
        JobOutcome::Abort { .. } => "failed",
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string())
}
