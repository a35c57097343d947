//! Adopting the Python service's PostgreSQL database (SPEC §10).
//!
//! A database the Python service created has an `alembic_version` table and no
//! `_sqlx_migrations`. [`adopt_if_legacy`] recognises it, refuses revisions it does not know, and
//! otherwise rewrites the legacy tables in one transaction into exactly what our first migration
//! (`20261129000001_core_tables`) creates — BIGINT ids, TIMESTAMPTZ (legacy values are UTC),
//! our constraint names, devices' model FK `ON DELETE RESTRICT`, a `secret_hash` column — and
//! records that migration as applied without running it. The ordinary migrator then applies the
//! rest; migration 8 takes over the rotation columns of `devices` and the `settings` table, values
//! included. Every row is kept, with its id.
//!
//! What is kept although iotsupport does not use it (dropping it would lose data an operator may
//! want if they go back): `devices.cached_secret` and the Alembic bookkeeping, renamed to
//! `alembic_version_adopted` so the Python service no longer mistakes the database for its own. `coredumps.filename` (revisions 005 and 006) stays, nullable, until
//! `migrate-to-s3` has moved every legacy dump; [`drop_filename_if_unused`] then removes it.

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Connection, PgConnection, PgPool};

use super::Db;

/// The Python service's revisions we can adopt.
pub const ADOPTABLE_REVISIONS: [&str; 4] = ["005", "006", "007", "008"];

/// The Alembic table after adoption.
const ADOPTED_TABLE: &str = "alembic_version_adopted";

/// Serialises concurrent `migrate` runs during adoption (sqlx's migrator takes its own lock later).
const ADOPTION_LOCK: i64 = 0x0069_6f74_7375_7001;

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "this database belongs to the Python IoTSupport service at Alembic revision {0}; \
         iotsupport adopts revisions 005 to 008 only. Upgrade it with the Python service first \
         (`alembic upgrade head`), then run `iotsupport migrate` again"
    )]
    TooOld(String),
    #[error(
        "this database has an Alembic revision iotsupport does not know ({0:?}); it adopts the \
         Python IoTSupport service's revisions 005 to 008 only. Nothing was changed"
    )]
    Unknown(String),
    #[error(
        "this database says Alembic revision {revision}, but its schema does not match: {problem}. \
         Nothing was changed"
    )]
    Mismatch { revision: String, problem: String },
    #[error(
        "adoption of the Python service's SQLite databases is not supported; export the data to \
         PostgreSQL, or start iotsupport on a fresh SQLite file"
    )]
    Sqlite,
    #[error("adopting the Python service's database failed (nothing was changed): {0}")]
    Sql(#[from] sqlx::Error),
    #[error("adopting the Python service's database failed (nothing was changed): {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The legacy revision of a database the Python service created and we have not adopted yet.
pub async fn legacy_revision_pg(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    legacy_revision(&mut conn).await
}

async fn legacy_revision(conn: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
    let has_alembic: bool = sqlx::query_scalar("SELECT to_regclass('alembic_version') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !has_alembic {
        return Ok(None);
    }
    let has_ours: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if has_ours {
        let baseline: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE success)")
                .fetch_one(&mut *conn)
                .await?;
        if baseline {
            return Ok(None);
        }
    }
    let revision: Option<String> =
        sqlx::query_scalar("SELECT version_num FROM alembic_version LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(Some(revision.unwrap_or_default()))
}

/// Whether a SQLite database was created by the Python service (which we refuse to adopt).
pub async fn is_legacy_sqlite(pool: &sqlx::SqlitePool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'
         AND NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await
}

/// Adopts the database if the Python service created it; returns the revision adopted.
pub async fn adopt_if_legacy(
    pool: &PgPool,
    migrator: &Migrator,
) -> Result<Option<String>, AdoptError> {
    let mut conn = pool.acquire().await?;
    // The common case (our own database) needs no transaction and no lock.
    if legacy_revision(&mut conn).await?.is_none() {
        return Ok(None);
    }
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADOPTION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Decided under the lock: a second `migrate` that waited here finds nothing left to adopt.
    let Some(revision) = legacy_revision(&mut tx).await? else {
        return Ok(None);
    };
    check_revision(&revision)?;
    check_schema(&mut tx, &revision).await?;

    for statement in adoption_sql(&revision) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    let baseline = migrator
        .iter()
        .find(|m| m.migration_type.is_up_migration())
        .ok_or_else(|| AdoptError::Migrate(sqlx::migrate::MigrateError::VersionMissing(1)))?;
    tx.ensure_migrations_table("_sqlx_migrations").await?;
    tx.skip("_sqlx_migrations", baseline).await?;
    tx.commit().await?;
    tracing::info!(
        alembic_revision = %revision,
        baseline = baseline.version,
        "legacy_database_adopted"
    );
    Ok(Some(revision))
}

fn check_revision(revision: &str) -> Result<(), AdoptError> {
    if ADOPTABLE_REVISIONS.contains(&revision) {
        return Ok(());
    }
    if ["001", "002", "003", "004"].contains(&revision) {
        return Err(AdoptError::TooOld(revision.to_string()));
    }
    Err(AdoptError::Unknown(revision.to_string()))
}

/// The few schema facts that tell the revisions apart; a database whose `alembic_version` lies
/// (hand-edited, half-migrated) is refused rather than guessed at.
async fn check_schema(conn: &mut PgConnection, revision: &str) -> Result<(), AdoptError> {
    let expected = [
        ("device_models", "config_schema", true),
        ("coredumps", "id", true),
        ("firmware_versions", "id", revision >= "006"),
        ("coredumps", "filename", revision <= "006"),
        ("devices", "active", revision >= "008"),
    ];
    for (table, column, present) in expected {
        let found = column_exists(&mut *conn, table, column).await?;
        if found != present {
            let state = if found { "present" } else { "missing" };
            return Err(AdoptError::Mismatch {
                revision: revision.to_string(),
                problem: format!("{table}.{column} is {state}"),
            });
        }
    }
    let bad_status: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM coredumps WHERE parse_status NOT IN ('PENDING', 'PARSED', 'ERROR')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if bad_status > 0 {
        return Err(AdoptError::Mismatch {
            revision: revision.to_string(),
            problem: format!(
                "{bad_status} coredumps row(s) have a parse_status other than PENDING, PARSED or ERROR"
            ),
        });
    }
    Ok(())
}

/// The statements that turn the legacy tables at `revision` into our first migration's schema.
fn adoption_sql(revision: &str) -> Vec<String> {
    let mut sql = Vec::new();
    if revision < "006" {
        // Revision 005 predates firmware_versions: create it as our first migration does.
        sql.push(
            "CREATE TABLE firmware_versions (
                id              BIGSERIAL PRIMARY KEY,
                device_model_id BIGINT      NOT NULL,
                version         VARCHAR(50) NOT NULL,
                uploaded_at     TIMESTAMPTZ NOT NULL,
                created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                CONSTRAINT uq_firmware_versions_model_version UNIQUE (device_model_id, version)
            );
            CREATE INDEX ix_firmware_versions_device_model_id ON firmware_versions (device_model_id);"
                .to_string(),
        );
    }
    sql.push(
        // Foreign keys first (they pin the column types), re-created below under our names.
        "DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
                     WHERE contype = 'f' AND conrelid IN ('devices'::regclass,
                           'coredumps'::regclass, 'firmware_versions'::regclass)
            LOOP
                EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
            END LOOP;
        END $$;"
            .to_string(),
    );
    sql.push(
        // INTEGER ids and references to BIGINT, naive timestamps (UTC) to TIMESTAMPTZ, each table
        // in one ALTER TABLE: every changed column rewrites the table, and PostgreSQL rewrites it
        // once for all of one statement's changes. Column by column, `coredumps` (the big one,
        // reports and all) was rewritten seven times in this one transaction, needing seven
        // times its size in free disk and WAL until the commit. Sequences follow, BIGINT too
        // (created where a table has none).
        "DO $$
        DECLARE t text; seq text; r record; changes text[];
        BEGIN
            FOREACH t IN ARRAY ARRAY['device_models', 'devices', 'firmware_versions', 'coredumps'] LOOP
                changes := ARRAY[]::text[];
                FOR r IN SELECT column_name, data_type FROM information_schema.columns
                         WHERE table_schema = current_schema() AND table_name = t
                         ORDER BY ordinal_position
                LOOP
                    IF r.data_type IN ('smallint', 'integer') AND (r.column_name = 'id'
                        OR (t IN ('devices', 'firmware_versions') AND r.column_name = 'device_model_id')
                        OR (t = 'coredumps' AND r.column_name IN ('device_id', 'size'))) THEN
                        changes := changes || format('ALTER COLUMN %I TYPE BIGINT', r.column_name);
                    ELSIF r.data_type = 'timestamp without time zone' THEN
                        -- Legacy timestamps are naive UTC.
                        changes := changes || format(
                            'ALTER COLUMN %I TYPE TIMESTAMPTZ USING %I AT TIME ZONE ''UTC''',
                            r.column_name, r.column_name);
                    END IF;
                END LOOP;
                IF cardinality(changes) > 0 THEN
                    EXECUTE format('ALTER TABLE %I %s', t, array_to_string(changes, ', '));
                END IF;
                seq := pg_get_serial_sequence(t, 'id');
                IF seq IS NULL THEN
                    seq := t || '_id_seq';
                    EXECUTE format('CREATE SEQUENCE %I AS BIGINT OWNED BY %I.id', seq, t);
                    EXECUTE format('SELECT setval(%L, COALESCE((SELECT max(id) FROM %I), 0) + 1, false)', seq, t);
                    EXECUTE format('ALTER TABLE %I ALTER COLUMN id SET DEFAULT nextval(%L)', t, seq);
                ELSE
                    EXECUTE format('ALTER SEQUENCE %s AS BIGINT', seq);
                END IF;
            END LOOP;
        END $$;"
            .to_string(),
    );
    sql.push(
        "ALTER TABLE devices ADD CONSTRAINT devices_device_model_id_fkey
             FOREIGN KEY (device_model_id) REFERENCES device_models (id) ON DELETE RESTRICT;
         ALTER TABLE firmware_versions ADD CONSTRAINT firmware_versions_device_model_id_fkey
             FOREIGN KEY (device_model_id) REFERENCES device_models (id) ON DELETE CASCADE;
         ALTER TABLE coredumps ADD CONSTRAINT coredumps_device_id_fkey
             FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE;"
            .to_string(),
    );
    sql.push(
        // Our code recognises unique violations by constraint name: give the legacy (unnamed, so
        // usually already so named) constraints ours.
        "DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT c.conrelid::regclass::text AS tbl, c.conname, a.attname
                     FROM pg_constraint c
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                     WHERE c.contype = 'u' AND array_length(c.conkey, 1) = 1
                       AND c.conrelid IN ('device_models'::regclass, 'devices'::regclass)
            LOOP
                IF r.conname <> r.tbl || '_' || r.attname || '_key' THEN
                    EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I',
                                   r.tbl, r.conname, r.tbl || '_' || r.attname || '_key');
                END IF;
            END LOOP;
        END $$;
        -- Plain indexes that duplicate those unique constraints.
        DROP INDEX IF EXISTS ix_device_models_code;
        DROP INDEX IF EXISTS ix_devices_key;"
            .to_string(),
    );
    sql.push(
        "ALTER TABLE device_models ALTER COLUMN created_at SET DEFAULT now(),
                                   ALTER COLUMN updated_at SET DEFAULT now();
         ALTER TABLE devices ALTER COLUMN created_at SET DEFAULT now(),
                             ALTER COLUMN updated_at SET DEFAULT now(),
                             ADD COLUMN IF NOT EXISTS active BOOLEAN NOT NULL DEFAULT TRUE,
                             ADD COLUMN secret_hash VARCHAR(64);
         -- Revision 008 made it DEFAULT '1'.
         ALTER TABLE devices ALTER COLUMN active SET DEFAULT TRUE;
         ALTER TABLE firmware_versions ALTER COLUMN created_at SET DEFAULT now();
         ALTER TABLE coredumps ALTER COLUMN parse_status SET DEFAULT 'PENDING',
                               ALTER COLUMN created_at SET DEFAULT now(),
                               ALTER COLUMN updated_at SET DEFAULT now(),
                               ADD CONSTRAINT ck_coredumps_parse_status
                                   CHECK (parse_status IN ('PENDING', 'PARSED', 'ERROR'));"
            .to_string(),
    );
    if revision <= "006" {
        sql.push("ALTER TABLE coredumps ALTER COLUMN filename DROP NOT NULL;".to_string());
    }
    sql.push(format!(
        "ALTER TABLE alembic_version RENAME TO {ADOPTED_TABLE};"
    ));
    sql
}

/// What [`drop_filename_if_unused`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyFilenames {
    /// The column does not exist (a fresh database, or dropped earlier).
    Absent,
    /// The column existed, no row used it, and it is gone now.
    Dropped,
    /// This many rows still name a legacy file that `migrate-to-s3` has not moved.
    Remaining(i64),
    /// No row uses it, but `coredumps` was too busy to lock: kept for the next run.
    Busy,
}

/// Whether `table.column` exists in the current schema.
async fn column_exists<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    table: &str,
    column: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2)",
    )
    .bind(table)
    .bind(column)
    .fetch_one(executor)
    .await
}

/// Whether `coredumps.filename` exists: only on an adopted PostgreSQL database while legacy dumps
/// remain (SQLite databases are never adopted).
pub async fn has_filename_column(db: &Db) -> Result<bool, sqlx::Error> {
    match db {
        Db::Postgres(pool) => column_exists(pool, "coredumps", "filename").await,
        Db::Sqlite(_) => Ok(false),
    }
}

/// Drops `coredumps.filename` once no row has a legacy file name left. The rows are counted
/// first without a lock (while legacy rows remain, as they do on every run but the last, nothing
/// is locked); only when none is left are the count and the drop repeated in one transaction
/// under an exclusive lock on `coredumps`, so no row can gain a file name in between (only
/// `migrate-to-s3` ever clears them; nothing sets them). That lock waits at most
/// [`DROP_LOCK_TIMEOUT`] behind open transactions (uploads, parses, page reads, which would queue
/// behind it meanwhile) and otherwise leaves the column to the next run. Safe to run
/// concurrently: a run that finds the column gone under the lock says `Absent`.
pub async fn drop_filename_if_unused(pool: &PgPool) -> Result<LegacyFilenames, sqlx::Error> {
    if !column_exists(pool, "coredumps", "filename").await? {
        return Ok(LegacyFilenames::Absent);
    }
    let remaining = legacy_filenames(pool).await?;
    if remaining > 0 {
        return Ok(LegacyFilenames::Remaining(remaining));
    }
    let mut tx = pool.begin().await?;
    // DROP_LOCK_TIMEOUT.
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    let locked = sqlx::query("LOCK TABLE coredumps IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await;
    match locked {
        Ok(_) => {}
        // lock_not_available: busy; the next run (migrate, migrate-to-s3) drops it.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            tracing::info!("legacy_filename_column_kept: coredumps is busy");
            return Ok(LegacyFilenames::Busy);
        }
        Err(e) => return Err(e),
    }
    if !column_exists(&mut *tx, "coredumps", "filename").await? {
        return Ok(LegacyFilenames::Absent);
    }
    let remaining = legacy_filenames(&mut *tx).await?;
    if remaining > 0 {
        return Ok(LegacyFilenames::Remaining(remaining));
    }
    sqlx::query("ALTER TABLE coredumps DROP COLUMN filename")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!("legacy_filename_column_dropped");
    Ok(LegacyFilenames::Dropped)
}

/// How long dropping `coredumps.filename` waits for its lock (`SET LOCAL lock_timeout` above).
pub const DROP_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn legacy_filenames<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM coredumps WHERE filename IS NOT NULL")
        .fetch_one(executor)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_sorted_into_adoptable_too_old_and_unknown() {
        for r in ADOPTABLE_REVISIONS {
            assert!(check_revision(r).is_ok(), "{r}");
        }
        assert!(matches!(check_revision("004"), Err(AdoptError::TooOld(_))));
        assert!(matches!(check_revision("009"), Err(AdoptError::Unknown(_))));
        assert!(matches!(check_revision(""), Err(AdoptError::Unknown(_))));
        assert!(matches!(
            check_revision("5a1b2c3d4e"),
            Err(AdoptError::Unknown(_))
        ));
    }

    #[test]
    fn only_early_revisions_create_firmware_versions_and_relax_filename() {
        let joined = |r: &str| adoption_sql(r).join("\n");
        assert!(joined("005").contains("CREATE TABLE firmware_versions"));
        assert!(!joined("006").contains("CREATE TABLE firmware_versions"));
        assert!(joined("006").contains("filename DROP NOT NULL"));
        assert!(!joined("007").contains("filename"));
        assert!(!joined("008").contains("filename"));
    }
}
