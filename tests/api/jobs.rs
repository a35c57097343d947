//! The durable job queue on both databases: claims only after commit, takeover of jobs whose
//! worker died, heartbeats, retry and abort outcomes, and no job run twice by concurrent workers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iotsupport::db::Db;
use iotsupport::jobs::worker::{JobHandler, JobRunner, Yield};
use iotsupport::jobs::{self, Job, JobOutcome};

use crate::helpers::*;

/// A handler that records the jobs it ran and answers with a scripted outcome.
struct Recorder {
    kind: &'static str,
    ran: Mutex<Vec<(i64, i32)>>,
    outcome: Box<dyn Fn(&Job) -> JobOutcome + Send + Sync>,
    delay: Duration,
}

impl Recorder {
    fn new(
        kind: &'static str,
        outcome: impl Fn(&Job) -> JobOutcome + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Recorder {
            kind,
            ran: Mutex::default(),
            outcome: Box::new(outcome),
            delay: Duration::ZERO,
        })
    }
    fn slow(kind: &'static str, delay: Duration) -> Arc<Self> {
        Arc::new(Recorder {
            kind,
            ran: Mutex::default(),
            outcome: Box::new(|_| JobOutcome::Completed),
            delay,
        })
    }
    fn ran(&self) -> Vec<(i64, i32)> {
        self.ran.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl JobHandler for Recorder {
    fn kind(&self) -> &'static str {
        self.kind
    }
    async fn run(&self, job: &Job) -> JobOutcome {
        tokio::time::sleep(self.delay).await;
        self.ran.lock().unwrap().push((job.id, job.attempts));
        (self.outcome)(job)
    }
}

async fn enqueue_committed(db: &Db, kind: &str, n: usize) -> Vec<i64> {
    let mut tx = db.begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            jobs::enqueue(&mut tx, kind, &serde_json::json!({ "n": i }), 3)
                .await
                .unwrap(),
        );
    }
    tx.commit().await.unwrap();
    ids
}

/// Pretends `lease` has passed since the last heartbeat of every running job.
async fn age_heartbeats(db: &Db, by: Duration) {
    let past = iotsupport::db::now() - chrono::Duration::from_std(by).unwrap();
    iotsupport::on_pool!(db, |p| sqlx::query(
        "UPDATE jobs SET heartbeat_at = $1 WHERE status = 'running'"
    )
    .bind(past)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
}

#[tokio::test]
async fn a_job_is_invisible_to_workers_until_its_transaction_commits() {
    for_each_stack("job_after_commit", &[], async |app| {
        let db = app.db().clone();
        let handler = Recorder::new("probe", |_| JobOutcome::Completed);
        let runner = JobRunner::new(db.clone(), vec![handler.clone()], Duration::from_secs(30));

        let mut tx = db.begin().await.unwrap();
        jobs::enqueue(&mut tx, "probe", &"payload", 3)
            .await
            .unwrap();
        // On SQLite the open write transaction blocks the claim; on PostgreSQL it runs and sees no job.
        if app.stack == Stack::Production {
            assert!(
                runner.run_one().await.unwrap().is_none(),
                "claimed before commit"
            );
        }
        tx.rollback().await.unwrap();
        assert!(
            runner.run_one().await.unwrap().is_none(),
            "rolled-back job ran"
        );

        enqueue_committed(&db, "probe", 1).await;
        let (job, outcome) = runner
            .run_one()
            .await
            .unwrap()
            .expect("committed job is claimed");
        assert_eq!(outcome, JobOutcome::Completed);
        assert_eq!(job.payload::<serde_json::Value>().unwrap()["n"], 0);
        assert!(
            jobs::list(&db).await.unwrap().is_empty(),
            "completed jobs are deleted"
        );
    })
    .await;
}

#[tokio::test]
async fn a_job_claimed_by_a_worker_that_died_is_picked_up_again() {
    for_each_stack("job_takeover", &[], async |app| {
        let db = app.db().clone();
        let lease = Duration::from_secs(30);
        let ids = enqueue_committed(&db, "probe", 1).await;

        // A worker claims the job and then dies: no heartbeat, no outcome.
        let claimed = jobs::claim(&db, "dead-worker", &["probe"], lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, ids[0]);

        let handler = Recorder::new("probe", |_| JobOutcome::Completed);
        let survivor = JobRunner::new(db.clone(), vec![handler.clone()], lease);
        assert!(
            survivor.run_one().await.unwrap().is_none(),
            "a fresh claim is respected"
        );

        age_heartbeats(&db, lease + Duration::from_secs(1)).await;
        let (job, outcome) = survivor
            .run_one()
            .await
            .unwrap()
            .expect("stale claim taken over");
        assert_eq!(job.id, ids[0]);
        assert_eq!(job.attempts, 2);
        assert_eq!(outcome, JobOutcome::Completed);
        assert_eq!(handler.ran(), vec![(ids[0], 2)]);
        // The dead worker cannot finish what it no longer owns.
        jobs::finish(
            &db,
            &claimed,
            "dead-worker",
            &JobOutcome::Abort {
                error: "late".into(),
            },
        )
        .await
        .unwrap();
        assert!(jobs::list(&db).await.unwrap().is_empty());
    })
    .await;
}

/// A worker whose heartbeats failed for longer than the lease (the database was away) may claim
/// its own job again as stale: the first run's claim is then lost. Its heartbeat says so, and its
/// outcome settles nothing, so the two runs never both settle the row.
#[tokio::test]
async fn a_worker_that_claims_its_own_job_again_loses_the_first_claim() {
    for_each_stack("job_own_reclaim", &[], async |app| {
        let db = app.db().clone();
        let lease = Duration::from_secs(30);
        enqueue_committed(&db, "probe", 1).await;
        let first = jobs::claim(&db, "worker", &["probe"], lease)
            .await
            .unwrap()
            .unwrap();
        assert!(jobs::heartbeat(&db, &first, "worker").await.unwrap());
        age_heartbeats(&db, lease + Duration::from_secs(1)).await;
        let second = jobs::claim(&db, "worker", &["probe"], lease)
            .await
            .unwrap()
            .expect("its own stale claim taken again");
        assert_eq!(second.attempts, first.attempts + 1);
        assert!(
            !jobs::heartbeat(&db, &first, "worker").await.unwrap(),
            "the first claim lives on"
        );
        // The first run's outcome (a retry after the outage, say) does not touch the second's row.
        let retry = JobOutcome::Retry {
            after: Duration::from_secs(60),
            error: "database away".into(),
        };
        jobs::finish(&db, &first, "worker", &retry).await.unwrap();
        let rows = jobs::list(&db).await.unwrap();
        assert_eq!(rows[0].status, "running");
        assert_eq!(rows[0].attempts, second.attempts);
        assert!(jobs::heartbeat(&db, &second, "worker").await.unwrap());
        jobs::finish(&db, &second, "worker", &JobOutcome::Completed)
            .await
            .unwrap();
        assert!(jobs::list(&db).await.unwrap().is_empty());
    })
    .await;
}

/// A process that stops while a job still runs past its wait gives the job back as it was before
/// that attempt (queued, due, the attempt not counted); another worker's jobs stay its own.
#[tokio::test]
async fn a_stopping_worker_gives_back_the_jobs_it_cut_off() {
    for_each_stack("job_release", &[], async |app| {
        let db = app.db().clone();
        let lease = Duration::from_secs(30);
        enqueue_committed(&db, "probe", 2).await;
        let mine = jobs::claim(&db, "stopping", &["probe"], lease)
            .await
            .unwrap()
            .unwrap();
        let theirs = jobs::claim(&db, "other", &["probe"], lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(jobs::release_claims(&db, "stopping").await.unwrap(), 1);
        let rows = jobs::list(&db).await.unwrap();
        let row = |id| rows.iter().find(|r| r.id == id).unwrap();
        assert_eq!(row(mine.id).status, "queued");
        assert_eq!(row(mine.id).attempts, 0);
        assert_eq!(row(mine.id).claimed_by, None);
        assert_eq!(row(theirs.id).status, "running");
        assert_eq!(row(theirs.id).claimed_by.as_deref(), Some("other"));
        // Claimable again at once.
        let again = jobs::claim(&db, "next", &["probe"], lease)
            .await
            .unwrap()
            .expect("the released job");
        assert_eq!((again.id, again.attempts), (mine.id, 1));
    })
    .await;
}

#[tokio::test]
async fn a_live_workers_heartbeat_keeps_its_claim() {
    for_each_stack("job_heartbeat", &[], async |app| {
        let db = app.db().clone();
        // The job runs for more than two leases; only heartbeats keep it claimed. The lease is
        // generous (heartbeats every lease/3) so a loaded machine cannot make it look dead.
        let lease = Duration::from_millis(2_000);
        enqueue_committed(&db, "probe", 1).await;
        let slow = Recorder::slow("probe", Duration::from_millis(5_000));
        let busy = JobRunner::new(db.clone(), vec![slow.clone()], lease);
        let work = tokio::spawn(async move { busy.run_one().await });
        // The busy worker must hold the claim before the other one looks: otherwise the other
        // would take a job that is still queued, which is no theft (seen once on a loaded CI run).
        let claimed = eventually(Duration::from_secs(20), || async {
            jobs::list(&db).await.unwrap()[0].status == "running"
        })
        .await;
        assert!(claimed, "the busy worker never claimed the job");

        let other = Recorder::new("probe", |_| JobOutcome::Completed);
        let thief = JobRunner::new(db.clone(), vec![other.clone()], lease);
        for _ in 0..18 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(
                thief.run_one().await.unwrap().is_none(),
                "claim stolen from a live worker"
            );
        }
        let (_, outcome) = work.await.unwrap().unwrap().unwrap();
        assert_eq!(outcome, JobOutcome::Completed);
        assert_eq!(slow.ran().len(), 1);
        assert!(other.ran().is_empty());
    })
    .await;
}

#[tokio::test]
async fn transient_failures_are_retried_later_and_permanent_ones_are_kept_as_failed() {
    for_each_stack("job_outcomes", &[], async |app| {
        let db = app.db().clone();
        let flaky = Recorder::new("flaky", |job| {
            if job.attempts < 3 {
                JobOutcome::Retry {
                    after: Duration::ZERO,
                    error: format!("attempt {} failed", job.attempts),
                }
            } else {
                JobOutcome::Completed
            }
        });
        let broken = Recorder::new("broken", |_| JobOutcome::Abort {
            error: "the dump is malformed".into(),
        });
        let later = Recorder::new("later", |_| JobOutcome::Retry {
            after: Duration::from_secs(3600),
            error: "S3 down".into(),
        });
        let runner = JobRunner::new(
            db.clone(),
            vec![flaky.clone(), broken.clone(), later.clone()],
            Duration::from_secs(30),
        );
        let flaky_id = enqueue_committed(&db, "flaky", 1).await[0];
        let broken_id = enqueue_committed(&db, "broken", 1).await[0];
        let later_id = enqueue_committed(&db, "later", 1).await[0];

        while runner.run_one().await.unwrap().is_some() {}

        assert_eq!(
            flaky.ran(),
            vec![(flaky_id, 1), (flaky_id, 2), (flaky_id, 3)]
        );
        let rows = jobs::list(&db).await.unwrap();
        let broken_row = rows.iter().find(|j| j.id == broken_id).unwrap();
        assert_eq!(broken_row.status, "failed");
        assert_eq!(
            broken_row.last_error.as_deref(),
            Some("the dump is malformed")
        );
        let later_row = rows.iter().find(|j| j.id == later_id).unwrap();
        assert_eq!(later_row.status, "queued", "waits for its backoff");
        assert_eq!(later_row.last_error.as_deref(), Some("S3 down"));
        assert!(later_row.run_at > iotsupport::db::now() + chrono::Duration::minutes(59));
        assert!(
            rows.iter().all(|j| j.id != flaky_id),
            "completed job deleted"
        );
    })
    .await;
}

/// A handler that ends its job in a transaction of its own (`jobs::complete_in`): committed, or
/// rolled back, or after another runner took the job over.
struct EndsItsJob {
    db: Db,
    commit: bool,
    taken_over_first: bool,
}

#[async_trait::async_trait]
impl JobHandler for EndsItsJob {
    fn kind(&self) -> &'static str {
        "ends_itself"
    }
    async fn run(&self, job: &Job) -> JobOutcome {
        if self.taken_over_first {
            iotsupport::on_pool!(&self.db, |p| sqlx::query(
                "UPDATE jobs SET claimed_by = 'another runner' WHERE id = $1"
            )
            .bind(job.id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        }
        let mut tx = self.db.begin().await.unwrap();
        jobs::complete_in(&mut tx, job).await.unwrap();
        if self.commit {
            tx.commit().await.unwrap();
            JobOutcome::CompletedInTransaction
        } else {
            tx.rollback().await.unwrap();
            JobOutcome::Retry {
                after: Duration::ZERO,
                error: "its work was rolled back".into(),
            }
        }
    }
}

#[tokio::test]
async fn a_job_ended_in_its_handlers_transaction_ends_only_if_that_commits() {
    for_each_stack("job_ends_in_transaction", &[], async |app| {
        let db = app.db().clone();
        let run = |commit, taken_over_first| {
            let handler = Arc::new(EndsItsJob {
                db: db.clone(),
                commit,
                taken_over_first,
            });
            let runner = JobRunner::new(db.clone(), vec![handler], Duration::from_secs(30));
            async move { runner.run_one().await.unwrap().map(|(_, outcome)| outcome) }
        };

        // Rolled back: the job is still there, queued for its next attempt.
        let [id] = enqueue_committed(&db, "ends_itself", 1).await[..] else {
            unreachable!()
        };
        assert!(matches!(
            run(false, false).await,
            Some(JobOutcome::Retry { .. })
        ));
        let jobs_now = jobs::list(&db).await.unwrap();
        assert_eq!(jobs_now.len(), 1);
        assert_eq!(
            (jobs_now[0].id, jobs_now[0].status.as_str()),
            (id, "queued")
        );
        assert_eq!(jobs_now[0].attempts, 1);

        // Committed: gone with the handler's work, and the runner deletes nothing more.
        iotsupport::on_pool!(&db, |p| sqlx::query("UPDATE jobs SET run_at = $1")
            .bind(iotsupport::db::now())
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .unwrap();
        assert_eq!(
            run(true, false).await,
            Some(JobOutcome::CompletedInTransaction)
        );
        assert!(jobs::list(&db).await.unwrap().is_empty(), "the job ended");

        // Taken over by another runner meanwhile: that runner's job, left to it.
        enqueue_committed(&db, "ends_itself", 1).await;
        assert_eq!(
            run(true, true).await,
            Some(JobOutcome::CompletedInTransaction)
        );
        let jobs_now = jobs::list(&db).await.unwrap();
        assert_eq!(jobs_now.len(), 1, "another runner's claim was ended");
        assert_eq!(jobs_now[0].status, "running");
        assert_eq!(jobs_now[0].claimed_by.as_deref(), Some("another runner"));
    })
    .await;
}

/// A handler that panics (a bug) ends its job at once as failed, with the panic's message: not
/// after its lease ran out `max_attempts` times with nothing said.
#[tokio::test]
async fn a_handler_that_panics_fails_its_job_at_once_saying_so() {
    for_each_stack("job_panics", &[], async |app| {
        let db = app.db().clone();
        let buggy = Recorder::new("buggy", |_| panic!("index 7 out of range"));
        let runner = JobRunner::new(db.clone(), vec![buggy.clone()], Duration::from_secs(30));
        let id = enqueue_committed(&db, "buggy", 1).await[0];
        while runner.run_one().await.unwrap().is_some() {}
        assert_eq!(buggy.ran(), vec![(id, 1)]);
        let rows = jobs::list(&db).await.unwrap();
        assert_eq!(rows[0].status, "failed");
        let error = rows[0].last_error.as_deref().unwrap_or_default();
        assert!(error.contains("index 7 out of range"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn retries_stop_when_attempts_are_exhausted() {
    for_each_stack("job_exhausted", &[], async |app| {
        let db = app.db().clone();
        let always = Recorder::new("always", |_| JobOutcome::Retry {
            after: Duration::ZERO,
            error: "still down".into(),
        });
        let runner = JobRunner::new(db.clone(), vec![always.clone()], Duration::from_secs(30));
        enqueue_committed(&db, "always", 1).await;
        while runner.run_one().await.unwrap().is_some() {}
        assert_eq!(always.ran().len(), 3, "max_attempts is 3");
        let rows = jobs::list(&db).await.unwrap();
        assert_eq!(rows[0].status, "failed");
    })
    .await;
}

#[tokio::test]
async fn concurrent_workers_never_run_a_job_twice() {
    for_each_stack("job_concurrency", &[], async |app| {
        let db = app.db().clone();
        let ids = enqueue_committed(&db, "probe", 40).await;
        let handler = Recorder::new("probe", |_| JobOutcome::Completed);
        let mut workers = Vec::new();
        for _ in 0..4 {
            let runner = JobRunner::new(db.clone(), vec![handler.clone()], Duration::from_secs(30));
            workers.push(tokio::spawn(async move {
                while runner.run_one().await.unwrap().is_some() {}
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let mut ran: Vec<i64> = handler.ran().into_iter().map(|(id, _)| id).collect();
        ran.sort();
        assert_eq!(ran, ids, "every job exactly once");
    })
    .await;
}

/// Counts how many of its jobs run at once, at most.
#[derive(Default)]
struct Overlap {
    now: AtomicUsize,
    most: AtomicUsize,
    done: AtomicUsize,
}

#[async_trait::async_trait]
impl JobHandler for Overlap {
    fn kind(&self) -> &'static str {
        "overlap"
    }
    async fn run(&self, _job: &Job) -> JobOutcome {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        JobOutcome::Completed
    }
}

#[tokio::test]
async fn a_runner_that_yields_to_busy_requests_runs_only_its_limit_until_they_are_over() {
    for_each_stack("job_yield", &[], async |app| {
        let db = app.db().clone();
        let handler = Arc::new(Overlap::default());
        let busy = Arc::new(AtomicBool::new(true));
        let signal = busy.clone();
        let runner = JobRunner::new(db.clone(), vec![handler.clone()], Duration::from_secs(30))
            .yielding_to(Yield {
                busy: Arc::new(move || signal.load(Ordering::SeqCst)),
                limit: 2,
            });
        let shutdown = tokio_util::sync::CancellationToken::new();
        let worker = tokio::spawn(runner.run(8, Duration::from_millis(20), shutdown.clone()));

        enqueue_committed(&db, "overlap", 12).await;
        wait_until(&handler.done, 12).await;
        assert_eq!(
            handler.most.load(Ordering::SeqCst),
            2,
            "at most the limit while busy"
        );

        busy.store(false, Ordering::SeqCst);
        handler.most.store(0, Ordering::SeqCst);
        enqueue_committed(&db, "overlap", 24).await;
        wait_until(&handler.done, 36).await;
        assert!(
            handler.most.load(Ordering::SeqCst) > 2,
            "every slot again once requests are over: at most {} at once",
            handler.most.load(Ordering::SeqCst)
        );
        // A job's row goes when the runner records its completion, just after the handler
        // returned (which is what `done` counts).
        let mut left = jobs::list(&db).await.unwrap();
        for _ in 0..500 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = jobs::list(&db).await.unwrap();
        }
        assert!(left.is_empty(), "jobs left: {left:?}");
        shutdown.cancel();
        worker.await.unwrap();
    })
    .await;
}

async fn wait_until(counter: &AtomicUsize, n: usize) {
    for _ in 0..1500 {
        if counter.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("only {} of {n} jobs ran", counter.load(Ordering::SeqCst));
}

#[tokio::test]
async fn jobs_without_a_handler_wait_for_a_process_that_has_one() {
    // The service's own workers would run `parse_coredump` jobs: keep them out of this test.
    let options = iotsupport::startup::BuildOptions {
        without_default_job_handlers: true,
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Stack::Embedded, "job_no_handler", &[], options).await else {
        return;
    };
    let db = app.db().clone();
    enqueue_committed(&db, "parse_coredump", 1).await;
    let other = Recorder::new("probe", |_| JobOutcome::Completed);
    let runner = JobRunner::new(db.clone(), vec![other], Duration::from_secs(30));
    assert!(runner.run_one().await.unwrap().is_none());
    assert_eq!(jobs::list(&db).await.unwrap()[0].status, "queued");
    app.stop().await;
}

#[tokio::test]
async fn queue_depth_and_the_oldest_jobs_age_are_exported() {
    let Some(app) = spawn_app(Stack::Production, "job_metrics").await else {
        return;
    };
    enqueue_committed(app.db(), "metrics_probe", 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = app.metrics().await;
    assert!(
        text.contains("jobs_queued{kind=\"metrics_probe\"} 3"),
        "{text}"
    );
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("jobs_oldest_queued_age_seconds{kind=\"metrics_probe\"} "))
        .expect("age gauge")
        .parse()
        .unwrap();
    assert!((1.0..120.0).contains(&age), "{age}");
    // The queue empties: the gauges go back to zero, not stay at their last value.
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "DELETE FROM jobs WHERE kind = 'metrics_probe'"
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    // A measurement serves the scrapes of the second after it (`SingleFlight::reusing`).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = app.metrics().await;
    assert!(
        text.contains("jobs_queued{kind=\"metrics_probe\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("jobs_oldest_queued_age_seconds{kind=\"metrics_probe\"} 0"),
        "{text}"
    );
    app.stop().await;
}

/// When the jobs table's statistics were last refreshed by hand (`ANALYZE`, not autovacuum).
async fn last_analyzed(db: &Db) -> Option<chrono::DateTime<chrono::Utc>> {
    let Db::Postgres(p) = db else {
        unreachable!("PostgreSQL only")
    };
    sqlx::query_scalar("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'jobs'")
        .fetch_one(p)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_backlog_gets_the_jobs_tables_statistics_refreshed_and_a_trickle_does_not() {
    let Some(app) = spawn_app(Stack::Production, "job_statistics").await else {
        return;
    };
    let db = app.db().clone();
    let handler = Recorder::new("statistics_probe", |_| JobOutcome::Completed);
    let runner = JobRunner::new(db.clone(), vec![handler.clone()], Duration::from_secs(30));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(runner.run(8, Duration::from_millis(20), shutdown.clone()));
    let ran = |n: usize| {
        let handler = handler.clone();
        async move {
            for _ in 0..1500 {
                if handler.ran().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("only {} of {n} jobs ran", handler.ran().len());
        }
    };

    // Fewer jobs than free slots, one commit at a time: no claim fills its slots.
    for _ in 0..3 {
        enqueue_committed(&db, "statistics_probe", 2).await;
    }
    ran(6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(last_analyzed(&db).await, None, "no backlog, no ANALYZE");

    // A burst larger than the slots: the first claim fills all of them.
    enqueue_committed(&db, "statistics_probe", 40).await;
    ran(46).await;
    let refreshed = eventually(Duration::from_secs(10), || async {
        last_analyzed(&db).await.is_some()
    })
    .await;
    assert!(refreshed, "the backlog's statistics were not refreshed");
    shutdown.cancel();
    worker.await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_statistics_refresh_gives_way_to_a_lock_on_the_jobs_table() {
    let Some(app) = spawn_app(Stack::Production, "job_statistics_lock").await else {
        return;
    };
    let db = app.db().clone();
    // What a VACUUM or another ANALYZE holds: the refresh must not queue behind it.
    let mut holder = db.begin().await.unwrap();
    iotsupport::execute!(
        &mut holder,
        sqlx::query("LOCK TABLE jobs IN SHARE UPDATE EXCLUSIVE MODE")
    )
    .unwrap();
    assert!(!jobs::refresh_statistics(&db).await.unwrap());
    holder.rollback().await.unwrap();
    assert_eq!(
        last_analyzed(&db).await,
        None,
        "nothing analysed while locked"
    );

    assert!(jobs::refresh_statistics(&db).await.unwrap());
    let refreshed = eventually(Duration::from_secs(10), || async {
        last_analyzed(&db).await.is_some()
    })
    .await;
    assert!(refreshed);
    app.stop().await;
}
