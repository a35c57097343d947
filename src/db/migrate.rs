//! Schema migrations: one folder per backend with the same versions (`migrations/postgres`,
//! `migrations/sqlite`), embedded in the binary. The two folders differ only where the SQL dialects
//! do (identity columns, timestamp types); a test applies both and runs the same queries on each.

use sqlx::migrate::{MigrateError, Migrator};

use super::adopt::{self, AdoptError, LegacyFilenames};
use super::Db;

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// One migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

fn migrator(db: &Db) -> &'static Migrator {
    match db {
        Db::Postgres(_) => &POSTGRES,
        Db::Sqlite(_) => &SQLITE,
    }
}

/// Why `migrate` failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Adopt(#[from] AdoptError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("database error while migrating: {0}")]
    Sql(#[from] sqlx::Error),
}

/// What a [`run`] did beyond applying migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationOutcome {
    /// The Python service's Alembic revision, when this run adopted its database.
    pub adopted: Option<String>,
    /// The state of the legacy `coredumps.filename` column after the run.
    pub legacy_filenames: LegacyFilenames,
}

/// Adopts a database of the Python service (see [`super::adopt`]), applies every pending
/// migration, then drops `coredumps.filename` if no legacy dump still needs it. Safe to run
/// concurrently: adoption and sqlx's migrator each take an advisory lock.
pub async fn run(db: &Db) -> Result<MigrationOutcome, MigrationError> {
    match db {
        Db::Postgres(p) => {
            let adopted = adopt::adopt_if_legacy(p, &POSTGRES).await?;
            POSTGRES.run(p).await?;
            let legacy_filenames = adopt::drop_filename_if_unused(p).await?;
            if let LegacyFilenames::Remaining(rows) = legacy_filenames {
                tracing::warn!(
                    rows,
                    "coredumps.filename kept: legacy core dumps still wait for `iotsupport migrate-to-s3`"
                );
            }
            Ok(MigrationOutcome {
                adopted,
                legacy_filenames,
            })
        }
        Db::Sqlite(p) => {
            if adopt::is_legacy_sqlite(p).await? {
                return Err(AdoptError::Sqlite.into());
            }
            SQLITE.run(p).await?;
            Ok(MigrationOutcome {
                adopted: None,
                legacy_filenames: LegacyFilenames::Absent,
            })
        }
    }
}

/// The Alembic revision of a Python-service database not adopted yet; `None` otherwise.
pub async fn legacy_revision(db: &Db) -> Result<Option<String>, sqlx::Error> {
    match db {
        Db::Postgres(p) => adopt::legacy_revision_pg(p).await,
        Db::Sqlite(_) => Ok(None),
    }
}

/// Every known migration with its applied flag, in version order. Read-only: works on a database
/// that has never been migrated (everything pending).
pub async fn status(db: &Db) -> Result<Vec<MigrationState>, sqlx::Error> {
    let applied = applied_versions(db).await?;
    Ok(migrator(db)
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationState {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// What [`status`] says of a SQLite database that does not exist yet: every migration pending.
pub fn status_of_a_new_sqlite_database() -> Vec<MigrationState> {
    SQLITE
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationState {
            version: m.version,
            description: m.description.to_string(),
            applied: false,
        })
        .collect()
}

async fn applied_versions(db: &Db) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool = match db {
        Db::Postgres(p) => {
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(p)
                .await?
        }
        Db::Sqlite(p) => {
            sqlx::query_scalar(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(p)
            .await?
        }
    };
    if !exists {
        return Ok(Vec::new());
    }
    crate::on_pool!(db, |p| sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version"
    )
    .fetch_all(p)
    .await)
}

/// How many migrations the database still lacks (0 when up to date).
pub async fn pending_count(db: &Db) -> Result<usize, sqlx::Error> {
    Ok(status(db).await?.iter().filter(|m| !m.applied).count())
}
