//! The metadata database: PostgreSQL in production, SQLite for the embedded default.
//!
//! Both backends run the same SQL text (`$N` placeholders, `RETURNING`, `ON CONFLICT` work on both;
//! see `../shared/docs/stack-notes.md`). [`Db`] and [`Tx`] are enums over the two concrete sqlx
//! types, and the [`on_conn!`](crate::on_conn) macro expands one query body into both arms so each
//! arm is type-checked against its own driver. Queries that must differ (row locking) match on the
//! variant explicitly.
//!
//! Transactions: every request that writes opens one [`Tx`] and commits it only on success; dropping
//! a `Tx` rolls it back. On SQLite, write transactions start with `BEGIN IMMEDIATE` so two writers
//! queue on the busy timeout instead of failing when one upgrades a read lock.

pub mod adopt;
pub mod clock;
pub mod coredumps;
pub mod crash_groups;
pub mod credentials;
pub mod device_logs;
pub mod device_models;
pub mod devices;
pub mod firmware_versions;
pub mod fleet_summary;
pub mod legacy;
pub mod listen;
pub mod migrate;
pub mod notifications;
pub mod reconcile;
pub mod rotation;
pub mod sessions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use crate::config::{Config, DatabaseKind};

/// How long the readiness probe waits for SQLite's write lock ([`Db::write_probe`]). Writes hold
/// it for milliseconds; a second and a half without it means writers are stuck.
pub const WRITE_PROBE_WAIT: Duration = Duration::from_millis(1500);

/// A pool of connections to one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// An open transaction. Dropped without [`Tx::commit`], it rolls back.
pub enum Tx {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

/// Runs the same query body on whichever connection a [`Tx`] (or `&mut Tx`) holds.
///
/// `on_conn!(tx, |c| sqlx::query("…").bind(x).fetch_one(c).await)` expands the body once per
/// backend; `c` is `&mut PgConnection` or `&mut SqliteConnection`. Both arms must produce the same
/// type, so map driver-specific results (e.g. `.map(|r| r.rows_affected())` after `execute`).
#[macro_export]
macro_rules! on_conn {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            $crate::db::Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::db::Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// `count` numbered placeholders from `$first`, each written out by `each` (`|p| p` for an `IN`
/// list, `|p| format!("({p}, $1)")` for rows), joined by commas. It is the only text a statement
/// for a list of values is built from; the values themselves are bound.
pub fn placeholder_list(first: usize, count: usize, each: impl Fn(String) -> String) -> String {
    (first..first + count)
        .map(|i| each(format!("${i}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Values per statement where a list is bound one placeholder each (SQLite, which has no array
/// parameters): well within its limit of 32,766 bound parameters.
pub const BIND_CHUNK: usize = 1000;

/// Runs a statement on whichever connection a [`Tx`] holds and returns how many rows it changed:
/// `execute!(tx, sqlx::query("UPDATE …").bind(x))` (the query is built once per backend).
#[macro_export]
macro_rules! execute {
    ($tx:expr, $query:expr) => {
        $crate::on_conn!($tx, |c| $query.execute(c).await.map(|r| r.rows_affected()))
    };
}

/// Like [`on_conn!`] but runs the body directly on a [`Db`] pool (one statement, autocommit).
#[macro_export]
macro_rules! on_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($p) => $body,
            $crate::db::Db::Sqlite($p) => $body,
        }
    };
}

/// Database failures, classified so callers and the HTTP layer can branch on them.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached or gave up on us: the request may succeed later (HTTP 503).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A unique constraint was violated; `constraint` is its name where the backend reports one.
    #[error("unique constraint violated ({constraint:?})")]
    UniqueViolation {
        constraint: Option<String>,
        #[source]
        source: sqlx::Error,
    },
    /// A foreign key constraint was violated.
    #[error("foreign key constraint violated ({constraint:?})")]
    ForeignKeyViolation {
        constraint: Option<String>,
        #[source]
        source: sqlx::Error,
    },
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::UniqueViolation { .. })
    }

    /// Whether this is a violation of one named constraint. PostgreSQL reports the constraint's
    /// name; SQLite reports the columns instead (`UNIQUE constraint failed: devices.key`), which
    /// the caller gives as `sqlite_columns`. Used to turn a constraint into a client error
    /// without a racy SELECT beforehand.
    pub fn violates(&self, constraint: &str, sqlite_columns: &str) -> bool {
        match self {
            DbError::UniqueViolation {
                constraint: name,
                source,
            }
            | DbError::ForeignKeyViolation {
                constraint: name,
                source,
            } => {
                name.as_deref() == Some(constraint)
                    || (!sqlite_columns.is_empty() && source.to_string().contains(sqlite_columns))
            }
            _ => false,
        }
    }

    pub fn is_foreign_key_violation(&self) -> bool {
        matches!(self, DbError::ForeignKeyViolation { .. })
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => DbError::Unavailable(e),
            sqlx::Error::Database(db) => {
                let constraint = db.constraint().map(str::to_string);
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                if db.is_unique_violation() {
                    DbError::UniqueViolation {
                        constraint,
                        source: e,
                    }
                } else if db.is_foreign_key_violation() {
                    DbError::ForeignKeyViolation {
                        constraint,
                        source: e,
                    }
                } else if is_unavailable_code(&code) {
                    DbError::Unavailable(e)
                } else {
                    DbError::Other(e)
                }
            }
            _ => DbError::Other(e),
        }
    }
}

/// SQLSTATE classes that mean "try again later": connection exceptions (08), insufficient
/// resources (53), operator intervention such as shutdown (57P0x); SQLite's BUSY (5) and LOCKED (6).
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P0")
        || code == "5"
        || code == "6"
}

/// A pooled PostgreSQL connection idle at least this long is pinged before it is handed out; a
/// dead one (the server restarted, or ended the session) is replaced by a new connection. sqlx's
/// default pings on *every* checkout, a round trip before each query or transaction taken from
/// the pool, on top of the ping with which it checks every connection given back. Skipping it for
/// connections busy a moment ago takes a round trip off the start of each: the credential and
/// image lookups of an uncached OTA request, a core-dump upload's two checkouts, and the model
/// lock that must be held before a firmware upload's image PUT can start. A connection that died
/// within that moment fails its query as unavailable (503), and the check on its return closes
/// it.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The most connections one process opens to PostgreSQL (its default `max_connections` is 100).
const MAX_POSTGRES_CONNECTIONS: u32 = 64;

impl Db {
    /// Opens a pool for the configured database. SQLite files (and their directory) are created.
    pub async fn connect(config: &Config) -> Result<Db, DbError> {
        let url = config.database_url.expose();
        match config.database_kind {
            DatabaseKind::Postgres => {
                let options = PgConnectOptions::from_str(url)?;
                // Ten for requests, plus the two listeners that hold one each for good (the
                // event hub's and the device-log watch's `PgListener::connect_with`), plus one per
                // job slot: a parse job holds a connection while it waits for its crash group's
                // row lock, and must not starve the requests.
                let connections = 12 + u32::try_from(config.job_concurrency).unwrap_or(u32::MAX);
                let pool = PgPoolOptions::new()
                    .max_connections(connections.min(MAX_POSTGRES_CONNECTIONS))
                    .acquire_timeout(Duration::from_secs(5))
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_AFTER_IDLE {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_lazy_with(options);
                Ok(Db::Postgres(pool))
            }
            DatabaseKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                if let Some(dir) = options.get_filename().parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| DbError::Unavailable(sqlx::Error::Io(e)))?;
                    }
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                Ok(Db::Sqlite(pool))
            }
        }
    }

    /// The configured SQLite database file when it does not exist ([`Db::connect`] would create
    /// it); `None` for PostgreSQL, an in-memory SQLite database, or a file that exists.
    pub fn missing_sqlite_file(config: &Config) -> Option<std::path::PathBuf> {
        if config.database_kind != DatabaseKind::Sqlite {
            return None;
        }
        let options = SqliteConnectOptions::from_str(config.database_url.expose()).ok()?;
        let file = options.get_filename();
        let in_memory = file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:");
        (!in_memory && !file.exists()).then(|| file.to_path_buf())
    }

    pub fn kind(&self) -> DatabaseKind {
        match self {
            Db::Postgres(_) => DatabaseKind::Postgres,
            Db::Sqlite(_) => DatabaseKind::Sqlite,
        }
    }

    /// Starts a transaction meant to write.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// Starts a transaction that only reads: one consistent snapshot for a page that shows
    /// several queries' results, without taking SQLite's write lock (a deferred `BEGIN`; in WAL
    /// mode readers never wait for writers) — so pages refreshed by every browser watching the
    /// fleet never queue behind uploads. On PostgreSQL a `REPEATABLE READ READ ONLY`
    /// transaction: under its default `READ COMMITTED` each statement had a snapshot of its own,
    /// so a page could count a dump in one query and miss it in the next ("stored 4 of 3"). A
    /// read-only transaction at that level never fails to serialise.
    pub async fn begin_read(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Postgres(p) => Tx::Postgres(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN").await?),
        })
    }

    /// Cheap liveness probe used by `/health/readyz`.
    pub async fn ping(&self) -> Result<(), DbError> {
        on_pool!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Whether a writer can start now, for `/health/readyz`; writes nothing. On SQLite, whether
    /// the write lock (`BEGIN IMMEDIATE`) is free within [`WRITE_PROBE_WAIT`], on a connection of
    /// its own: every write request queues for that lock, so a writer that holds it longer (a
    /// stuck request) makes them all fail while plain reads still work. On PostgreSQL, whether a
    /// transaction may write at all (a read-only database or standby answers reads only).
    pub async fn write_probe(&self) -> Result<(), WriteProbeError> {
        match self {
            Db::Sqlite(pool) => {
                let options = (*pool.connect_options())
                    .clone()
                    .busy_timeout(WRITE_PROBE_WAIT);
                let describe = |e: sqlx::Error| match &e {
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("5") => {
                        WriteProbeError::Refused(format!(
                            "writers are stuck: the write lock was not free within {} s",
                            WRITE_PROBE_WAIT.as_secs_f64()
                        ))
                    }
                    _ => WriteProbeError::Failed(e.to_string()),
                };
                // Dropped (or closed) with its transaction open, the connection rolls it back.
                let mut conn = sqlx::ConnectOptions::connect(&options)
                    .await
                    .map_err(describe)?;
                let probe = async {
                    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
                    sqlx::query("ROLLBACK").execute(&mut conn).await
                }
                .await;
                let _ = sqlx::Connection::close(conn).await;
                probe.map(|_| ()).map_err(describe)
            }
            Db::Postgres(pool) => {
                let read_only: String =
                    sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
                        .fetch_one(pool)
                        .await
                        .map_err(|e| WriteProbeError::Failed(e.to_string()))?;
                if read_only == "on" {
                    return Err(WriteProbeError::Refused(
                        "the database is read-only (a standby?): writes would fail".into(),
                    ));
                }
                Ok(())
            }
        }
    }

    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Postgres(t) => t.commit().await?,
            Tx::Sqlite(t) => t.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        match self {
            Tx::Postgres(t) => t.rollback().await?,
            Tx::Sqlite(t) => t.rollback().await?,
        }
        Ok(())
    }
}

/// The current time on the database's clock, at the precision both databases store
/// (microseconds): see [`clock`].
pub fn now() -> chrono::DateTime<chrono::Utc> {
    clock::now()
}

/// Why [`Db::write_probe`] found that no writer can start.
#[derive(Debug)]
pub enum WriteProbeError {
    /// The database answered and refuses writers now (the write lock is stuck, a read-only
    /// standby): said in words of our own, fit for anyone to read.
    Refused(String),
    /// The check itself failed: the driver's error, for the log.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::placeholder_list;

    #[test]
    fn placeholder_lists_number_from_the_first_and_write_each_out() {
        assert_eq!(placeholder_list(2, 3, |p| p), "$2, $3, $4");
        assert_eq!(
            placeholder_list(2, 2, |p| format!("({p}, $1)")),
            "($2, $1), ($3, $1)"
        );
        assert_eq!(placeholder_list(1, 0, |p| p), "");
    }
}
