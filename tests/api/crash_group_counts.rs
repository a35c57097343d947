//! Crash-group counts stay exact: many dumps of one crash parsed at once by several job workers
//! in two processes sharing the database, concurrent moves in opposite directions, and the
//! backfill job that groups dumps parsed before groups existed, taken over from a worker that
//! died after its first batch (and queued by the migration where it has work).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use esp_coredump::CrashSignature;
use iotsupport::coredumps::backfill::{self, GroupCoredumps, BACKFILL_JOB};
use iotsupport::coredumps::groups;
use iotsupport::db::crash_groups::MemberFacts;
use iotsupport::jobs::worker::JobRunner;
use iotsupport::jobs::JobOutcome;
use serde_json::{json, Value};

use crate::coredumps::*;
use crate::crash_support::*;
use crate::fleet::device_of;
use crate::helpers::*;

const DEVICES: usize = 6;
const DUMPS_PER_DEVICE: usize = 4;

#[tokio::test]
async fn counts_stay_exact_when_two_processes_parse_many_dumps_of_one_crash_at_once() {
    let Some(crashes) = crashes() else { return };
    let settings = [("JOB_CONCURRENCY", "4"), ("MAX_COREDUMPS", "50")];
    for stack in ALL_STACKS {
        let Some((one, two)) = spawn_twins(stack, "crash_groups_concurrent", &settings).await
        else {
            continue;
        };
        let first = model_with_device(&one, "sensor").await;
        let mut devices = vec![first.clone()];
        for _ in 1..DEVICES {
            devices.push(device_of(&one, first.model_id).await);
        }
        store_builds(&one, "sensor", &crashes).await;

        // Every device uploads its dumps (both builds of one crash) while the others do, half of
        // the devices through each process; both processes' workers parse as dumps arrive.
        let uploads = devices.iter().enumerate().map(|(i, device)| {
            let (app, crashes) = (if i % 2 == 0 { &one } else { &two }, &crashes);
            async move {
                let mut ids = Vec::new();
                for n in 0..DUMPS_PER_DEVICE {
                    let crash = [&crashes.abort_v1, &crashes.abort_v2][n % 2];
                    ids.push(upload_crash(app, device, crash).await);
                }
                ids
            }
        });
        let ids = futures::future::join_all(uploads).await;
        for (device, ids) in devices.iter().zip(&ids) {
            for id in ids {
                parsed(&one, device, *id).await;
            }
        }

        let total = DEVICES * DUMPS_PER_DEVICE;
        let list = groups(&two, first.model_id, "").await;
        assert_eq!(list.len(), 1, "{stack:?}: {list:?}");
        assert_eq!(list[0]["coredump_count"], total, "{stack:?}");
        assert_eq!(list[0]["device_count"], DEVICES, "{stack:?}");
        let detail = group(&one, list[0]["id"].as_i64().unwrap()).await;
        for counts in detail["firmware_version_counts"].as_array().unwrap() {
            assert_eq!(counts["coredump_count"], total / 2, "{stack:?}: {counts}");
            assert_eq!(counts["device_count"], DEVICES, "{stack:?}: {counts}");
        }
        assert_eq!(events_of(&one, "crash_group_created").await.len(), 1);
        assert_eq!(
            events_of(&one, "crash_group_updated").await.len(),
            total - 1
        );
        assert_counts_match_ledger(&one).await;
        one.stop().await;
        two.stop().await;
    }
}

fn signature(name: &str) -> CrashSignature {
    let text = format!("v1 | abort() | {name}");
    CrashSignature {
        hash: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
        title: format!("abort() in {name}"),
        text,
    }
}

#[tokio::test]
async fn concurrent_moves_between_two_groups_in_opposite_directions_neither_deadlock_nor_miscount()
{
    TestApp::builder("crash_groups_moves")
        .without_default_job_handlers()
        .env("MAX_COREDUMPS", "50")
        .for_each_stack(async |app| {
            let first = model_with_device(app, "sensor").await;
            let mut devices = vec![first.clone()];
            for _ in 1..DEVICES {
                devices.push(device_of(app, first.model_id).await);
            }
            for (i, device) in devices.iter().enumerate() {
                for n in 0..DUMPS_PER_DEVICE {
                    upload_ok(app, device, &format!("1.{}", (i + n) % 3), b"dump").await;
                }
            }
            let facts: Vec<MemberFacts> = iotsupport::on_pool!(app.db(), |p| {
                sqlx::query_as(
                "SELECT c.id AS coredump_id, c.device_id, d.device_model_id, c.firmware_version,
                        c.uploaded_at
                 FROM coredumps c JOIN devices d ON d.id = c.device_id ORDER BY c.id"
            )
            .fetch_all(p)
            .await
            })
            .unwrap();
            let (a, b) = (signature("left"), signature("right"));
            // Every dump joins a group at once (even ones `a`, odd ones `b`), then every dump
            // moves to the other group at once: moves in both directions run together.
            for round in 0..2 {
                let tasks = facts.iter().enumerate().map(|(i, dump)| {
                    let sig = if (i + round) % 2 == 0 { &a } else { &b };
                    async move {
                        let mut tx = app.db().begin().await.unwrap();
                        groups::assign(&mut tx, dump, sig).await.unwrap();
                        tx.commit().await.unwrap();
                    }
                });
                futures::future::join_all(tasks).await;
                assert_counts_match_ledger(app).await;
            }
            let list = groups(app, first.model_id, "").await;
            assert_eq!(list.len(), 2);
            for g in &list {
                assert_eq!(g["coredump_count"], DEVICES * DUMPS_PER_DEVICE / 2, "{g}");
            }
            let moved = events_of(app, "crash_group_updated").await.len();
            // Round one: all but the two creations; round two: two events per move.
            assert_eq!(moved, facts.len() - 2 + 2 * facts.len());
        })
        .await;
}

/// What the tests compare of a model's groups, by title (ids differ after a regrouping).
async fn by_title(app: &TestApp, model_id: i64) -> BTreeMap<String, Value> {
    let mut shown = BTreeMap::new();
    for g in groups(app, model_id, "").await {
        let detail = group(app, g["id"].as_i64().unwrap()).await;
        let versions: Vec<Value> = detail["firmware_version_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                json!([
                    v["firmware_version"],
                    v["coredump_count"],
                    v["device_count"],
                    v["first_seen_at"],
                    v["last_seen_at"]
                ])
            })
            .collect();
        let dumps: Vec<Value> = detail["coredumps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].clone())
            .collect();
        shown.insert(
            g["title"].as_str().unwrap().to_string(),
            json!({
                "signature": g["signature"], "status": g["status"],
                "coredump_count": g["coredump_count"], "device_count": g["device_count"],
                "first_seen_at": g["first_seen_at"], "last_seen_at": g["last_seen_at"],
                "firmware_versions": g["firmware_versions"], "versions": versions, "dumps": dumps,
            }),
        );
    }
    shown
}

async fn execute(app: &TestApp, sql: &'static str) {
    iotsupport::on_pool!(app.db(), |p| sqlx::query(sql)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .unwrap();
}

#[tokio::test]
async fn the_backfill_groups_dumps_parsed_before_groups_existed_and_resumes_after_its_worker_died()
{
    let Some(crashes) = crashes() else { return };
    TestApp::builder("crash_groups_backfill")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let d1 = model_with_device(app, "sensor").await;
            let d2 = device_of(app, d1.model_id).await;
            store_builds(app, "sensor", &crashes).await;
            let mut dumps = Vec::new();
            for (device, crash) in [
                (&d1, &crashes.abort_v1),
                (&d2, &crashes.store),
                (&d1, &crashes.abort_v2),
                (&d2, &crashes.abort_v1),
                (&d1, &crashes.store),
                (&d2, &crashes.abort_v2),
                (&d2, &crashes.abort_v1),
            ] {
                dumps.push((device, upload_crash(app, device, crash).await));
            }
            // A dump of another model that will have no structured report (as if the sidecar
            // had parsed it): the backfill leaves it alone.
            let other = model_with_device(app, "other").await;
            put_elf(app, "other", "1.0.0", crashes.abort_v1.elf.clone()).await;
            let reportless = upload_crash(app, &other, &crashes.abort_v1).await;
            while run_one_job(app).await.is_some() {}
            let grouped_at_parse_time = by_title(app, d1.model_id).await;
            assert_eq!(grouped_at_parse_time.len(), 2);

            // The state migration 10 finds: parsed dumps, no groups.
            execute(app, "DELETE FROM crash_groups").await;
            execute(app, "UPDATE coredumps SET report = NULL WHERE device_id IN (SELECT id FROM devices WHERE device_model_id IN (SELECT id FROM device_models WHERE code = 'other'))").await;
            assert_eq!(count(app, "crash_group_members").await, 0);
            assert_eq!(groups(app, d1.model_id, "").await.len(), 0);
            assert_eq!(group_of(app, &d1, dumps[0].1).await, Value::Null);

            // A worker claims the job, groups its first batch and dies.
            let job = backfill::enqueue(app.db()).await.unwrap();
            let claimed = iotsupport::jobs::claim(
                app.db(),
                "worker-that-dies",
                &[BACKFILL_JOB],
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .expect("the backfill job");
            assert_eq!(claimed.id, job);
            let batch = backfill::run_batch(app.db(), 0, 3).await.unwrap();
            assert_eq!((batch.read, batch.grouped), (3, 3), "{batch:?}");
            let partial: i64 = groups(app, d1.model_id, "")
                .await
                .iter()
                .map(|g| g["coredump_count"].as_i64().unwrap())
                .sum();
            assert_eq!(partial, 3);
            assert_counts_match_ledger(app).await;

            // Its claim goes stale; another worker takes the job over and finishes it, in
            // batches of two, without counting the first batch twice.
            let lease = Duration::from_millis(300);
            let handler = GroupCoredumps { db: app.db().clone(), batch: 2 };
            let runner = JobRunner::new(app.db().clone(), vec![Arc::new(handler)], lease);
            tokio::time::sleep(lease * 2).await;
            let (taken, outcome) = runner.run_one().await.unwrap().expect("the stale job");
            assert_eq!((taken.id, taken.attempts), (job, 2));
            assert_eq!(outcome, JobOutcome::Completed);
            assert_eq!(by_title(app, d1.model_id).await, grouped_at_parse_time);
            for (device, id) in &dumps {
                assert!(group_of(app, device, *id).await.is_i64());
            }
            assert_eq!(group_of(app, &other, reportless).await, Value::Null);
            assert_eq!(groups(app, other.model_id, "").await.len(), 0);
            assert_counts_match_ledger(app).await;

            // Run again (a second queued job, or a retry): nothing changes.
            let events = iotsupport::events::newest_id(app.db()).await.unwrap();
            backfill::enqueue(app.db()).await.unwrap();
            let (_, outcome) = runner.run_one().await.unwrap().expect("the second job");
            assert_eq!(outcome, JobOutcome::Completed);
            assert_eq!(by_title(app, d1.model_id).await, grouped_at_parse_time);
            assert_eq!(iotsupport::events::newest_id(app.db()).await.unwrap(), events);
            assert_eq!(count(app, "jobs").await, 0);
        })
        .await;
}

/// Undoes migration 10 by hand (its tables, columns and `_sqlx_migrations` row), so the
/// migrator applies it again to the data that is there: an upgrade of a deployment with dumps.
async fn before_migration_10(app: &TestApp) {
    for sql in [
        "DROP TABLE crash_group_versions",
        "DROP TABLE crash_group_members",
        "DROP TABLE crash_groups",
        "DROP INDEX ix_devices_model_running_version",
        "ALTER TABLE devices DROP COLUMN running_firmware_version",
        "ALTER TABLE devices DROP COLUMN last_seen_at",
        "DELETE FROM _sqlx_migrations WHERE version = 20261206000010",
    ] {
        execute(app, sql).await;
    }
}

#[tokio::test]
async fn the_migration_queues_the_backfill_where_parsed_dumps_have_reports_and_nowhere_else() {
    let Some(crashes) = crashes() else { return };
    TestApp::builder("crash_groups_migration")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            // Nothing parsed yet: no job.
            let device = model_with_device(app, "sensor").await;
            store_builds(app, "sensor", &crashes).await;
            let id = upload_crash(app, &device, &crashes.abort_v1).await;
            before_migration_10(app).await;
            iotsupport::db::migrate::run(app.db()).await.unwrap();
            let kinds = |jobs: Vec<iotsupport::jobs::JobRecord>| -> Vec<String> {
                jobs.into_iter().map(|j| j.kind).collect()
            };
            let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
            assert_eq!(kinds(jobs), ["parse_coredump"]);

            // A parsed dump with a report: the upgrade queues the backfill, which groups it.
            while run_one_job(app).await.is_some() {}
            before_migration_10(app).await;
            iotsupport::db::migrate::run(app.db()).await.unwrap();
            let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
            assert_eq!(kinds(jobs), [BACKFILL_JOB]);
            let handler = GroupCoredumps::new(app.db().clone());
            let runner = JobRunner::new(
                app.db().clone(),
                vec![Arc::new(handler)],
                Duration::from_secs(60),
            );
            let (_, outcome) = runner.run_one().await.unwrap().expect("the backfill job");
            assert_eq!(outcome, JobOutcome::Completed);
            assert!(group_of(app, &device, id).await.is_i64());
            assert_eq!(
                groups(app, device.model_id, "").await[0]["coredump_count"],
                1
            );
        })
        .await;
}
