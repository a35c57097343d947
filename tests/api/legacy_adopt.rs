//! `iotsupport migrate` on the Python service's database (SPEC §10): adopting it at each Alembic
//! revision it knows, keeping rows, ids and times, and serving it afterwards; refusing revisions
//! it does not know and stamps that lie, without changing anything.

use chrono::{DateTime, TimeZone, Utc};

use crate::legacy::*;

#[tokio::test]
async fn migrate_adopts_every_known_revision_keeping_rows_ids_and_times() {
    for revision in ["005", "006", "007", "008"] {
        let test = format!("adopt_{revision}");
        let Some(legacy) = legacy_database(&test, revision).await else {
            return;
        };
        let out = assert_success(&run(&legacy.env(), &["migrate", "status"]));
        assert!(
            out.contains(&format!("Alembic revision \"{revision}\"")),
            "{out}"
        );

        let out = assert_success(&run(&legacy.env(), &["migrate"]));
        assert!(
            out.contains(&format!(
                "adopted the Python service's database at Alembic revision {revision}"
            )),
            "{revision}: {out}"
        );
        let legacy_files = revision <= "006";
        if legacy_files {
            assert!(
                out.contains("kept coredumps.filename: 3 legacy core dump(s)"),
                "{out}"
            );
        }

        let mut conn = legacy.conn().await;
        assert_eq!(
            count(&mut conn, "SELECT count(*) FROM device_models").await,
            2
        );
        assert_eq!(count(&mut conn, "SELECT count(*) FROM devices").await, 2);
        assert_eq!(count(&mut conn, "SELECT count(*) FROM coredumps").await, 3);
        // Each device's dump count (migration 24) counted the adopted dumps.
        let counts: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT d.id, d.coredump_count,
                    (SELECT COUNT(*) FROM coredumps c WHERE c.device_id = d.id)
             FROM devices d ORDER BY d.id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for (device, kept, counted) in &counts {
            assert_eq!(
                kept, counted,
                "{revision}: device {device}'s coredump_count"
            );
        }
        assert_eq!(counts.iter().map(|(_, kept, _)| kept).sum::<i64>(), 3);
        assert_eq!(
            count(&mut conn, "SELECT count(*) FROM firmware_versions").await,
            i64::from(revision >= "006")
        );
        // Kept although unused: the rotation bookkeeping and the Alembic stamp (renamed).
        assert_eq!(count(&mut conn, "SELECT count(*) FROM settings").await, 1);
        let stamp: String = sqlx::query_scalar("SELECT version_num FROM alembic_version_adopted")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(stamp, revision);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM devices ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(ids, [1, 2]);
        // Naive UTC timestamps became the same instants.
        let created: DateTime<Utc> =
            sqlx::query_scalar("SELECT created_at FROM devices WHERE key = 'abcdefgh'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(created, Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        assert_eq!(
            has_column(&mut conn, "coredumps", "filename").await,
            legacy_files
        );
        if legacy_files {
            assert_eq!(
                count(
                    &mut conn,
                    "SELECT count(*) FROM coredumps WHERE filename IS NOT NULL"
                )
                .await,
                3
            );
        }

        // Idempotent, and `status` agrees.
        let again = assert_success(&run(&legacy.env(), &["migrate"]));
        assert!(again.contains("applied 0 migration(s)"), "{again}");
        assert!(!again.contains("adopted"), "{again}");
        let status = assert_success(&run(&legacy.env(), &["migrate", "status"]));
        assert!(status.contains(" 0 pending"), "{status}");
        assert!(!status.contains("Alembic"), "{status}");

        // The API serves the adopted data and writes to it with our semantics.
        let app = serve(&legacy, &test, &[]).await;
        let (status, models) = app.list_models().await;
        assert_eq!(status, 200);
        let codes: Vec<&str> = models["device_models"]
            .as_array()
            .unwrap_or_else(|| panic!("{models}"))
            .iter()
            .map(|m| m["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes.len(), 2, "{models}");
        assert!(codes.contains(&"sensor") && codes.contains(&"lamp"));
        let (status, device) = app.get_device(1).await;
        assert_eq!(status, 200, "{device}");
        assert_eq!(device["key"], "abcdefgh");
        assert_eq!(device["device_name"], "kitchen");
        assert_eq!(device["active"], true);
        // The Python service's rotation columns keep their values (naive UTC → TIMESTAMPTZ);
        // QUEUED as adopted, unless serve's rotation worker already started it (PENDING).
        assert!(
            ["QUEUED", "PENDING"].contains(&device["rotation_state"].as_str().unwrap_or("")),
            "{device}"
        );
        assert_eq!(
            device["secret_created_at"], "2025-01-02T03:04:05Z",
            "{device}"
        );
        assert_eq!(
            device["last_rotation_completed_at"], "2025-01-03T04:05:06Z",
            "{device}"
        );
        assert_eq!(device["client_id"], "iotdevice-sensor-abcdefgh");
        let (status, dumps) = app.list_coredumps(1).await;
        assert_eq!(status, 200, "{dumps}");
        assert_eq!(dumps["count"], 2, "{dumps}");
        let (status, created) = app.create_device(1, "{}").await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(
            created["id"], 3,
            "the id sequence continues after the legacy rows"
        );
        let (status, model) = app.create_model("plug", "Plug", None).await;
        assert_eq!(status, 201, "{model}");
        let (status, duplicate) = app.create_model("sensor", "Again", None).await;
        assert_eq!(
            status, 409,
            "legacy unique constraint recognised: {duplicate}"
        );
        // Models with devices can no longer be deleted (the legacy FK cascaded).
        let (status, _) = app.delete_model(1).await;
        assert_eq!(status, 409);
        app.stop().await;

        if legacy_files {
            // The guard: the column goes only when no row names a legacy file any more.
            exec(
                &mut conn,
                "DELETE FROM coredumps WHERE filename LIKE 'coredump_2025010%'",
            )
            .await;
            let out = assert_success(&run(&legacy.env(), &["migrate"]));
            assert!(
                out.contains("dropped coredumps.filename"),
                "{revision}: {out}"
            );
            assert!(!has_column(&mut conn, "coredumps", "filename").await);
        }
    }
}

#[tokio::test]
async fn migrate_refuses_unknown_revisions_and_lying_stamps_without_changing_anything() {
    for (revision, stamp, expected) in [
        (
            "004",
            "004",
            "revision 004; iotsupport adopts revisions 005 to 008 only",
        ),
        (
            "008",
            "009",
            "Alembic revision iotsupport does not know (\"009\")",
        ),
        // The stamp says 007 (filename dropped) but the column is still there.
        ("006", "007", "coredumps.filename is present"),
    ] {
        let Some(legacy) = legacy_database(&format!("refuse_{stamp}"), revision).await else {
            return;
        };
        let mut conn = legacy.conn().await;
        sqlx::query("UPDATE alembic_version SET version_num = $1")
            .bind(stamp)
            .execute(&mut conn)
            .await
            .unwrap();
        let output = run(&legacy.env(), &["migrate"]);
        assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert_eq!(
            count(&mut conn, "SELECT count(*) FROM alembic_version").await,
            1
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT count(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations'"
            )
            .await,
            0
        );
        let id_type: String = sqlx::query_scalar(
            "SELECT data_type FROM information_schema.columns
             WHERE table_name = 'devices' AND column_name = 'id'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(id_type, "integer", "the legacy schema was left alone");
    }
}

/// The payloads of the queued parse jobs.
async fn queued_parses(conn: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT payload FROM jobs WHERE kind = 'parse_coredump' AND status = 'queued'",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn adopted_pending_dumps_already_in_the_bucket_are_queued_for_parsing_once() {
    // 008: the Python service's dumps are in the bucket (no `filename`); dump 2 is PENDING.
    let Some(legacy) = legacy_database("adopt_pending_008", "008").await else {
        return;
    };
    let out = assert_success(&run(&legacy.env(), &["migrate"]));
    assert!(
        out.contains("queued 1 parse(s) of adopted core dumps still PENDING"),
        "{out}"
    );
    let mut conn = legacy.conn().await;
    assert_eq!(queued_parses(&mut conn).await, [r#"{"coredump_id":2}"#]);
    // Nothing is adopted twice, so nothing is queued twice.
    assert_success(&run(&legacy.env(), &["migrate"]));
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM jobs WHERE kind = 'parse_coredump'"
        )
        .await,
        1
    );

    // A database adopted by a release whose queuing step was lost after adoption (a failure
    // or a crash between the two): the migration that queues them runs on the next `migrate`.
    sqlx::query("DELETE FROM jobs")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 20261207000017")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_success(&run(&legacy.env(), &["migrate"]));
    assert_eq!(queued_parses(&mut conn).await, [r#"{"coredump_id":2}"#]);

    // 006: the PENDING dump is still a file; `migrate-to-s3` queues it when it moves it.
    let Some(legacy) = legacy_database("adopt_pending_006", "006").await else {
        return;
    };
    let out = assert_success(&run(&legacy.env(), &["migrate"]));
    assert!(
        out.contains("queued 0 parse(s) of adopted core dumps still PENDING"),
        "{out}"
    );
    let mut conn = legacy.conn().await;
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM jobs WHERE kind = 'parse_coredump'"
        )
        .await,
        0
    );
}
