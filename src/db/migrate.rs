//! Schema migrations: one folder per backend with the same versions (`migrations/postgres`,
//! `migrations/sqlite`), embedded in the binary. The two folders differ only where the SQL dialects
//! do (identity columns, timestamp types); a test applies both and runs the same queries on each.

use sqlx::migrate::{MigrateError, Migrator};

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

/// Applies every pending migration. Safe to run concurrently: sqlx takes an advisory lock.
pub async fn run(db: &Db) -> Result<(), MigrateError> {
    match db {
        Db::Postgres(p) => POSTGRES.run(p).await,
        Db::Sqlite(p) => SQLITE.run(p).await,
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
