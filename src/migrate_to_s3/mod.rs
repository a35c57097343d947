//! `iotsupport migrate-to-s3`: copies the Python service's files into the bucket (SPEC §10).
//!
//! Two phases, both rerunnable and never touching the source files:
//! - [`firmware`]: `ASSETS_DIR/{model_code}/firmware-{version}.zip` bundles are validated like an
//!   upload and stored through [`crate::firmware::store::import_bundle`] (golden rule 1; the
//!   model's current version and retention are left alone);
//! - [`coredumps`]: `COREDUMPS_DIR/{device_key}/{filename}` files are matched to the adopted rows
//!   that still name them, uploaded to `coredumps/{key}/{id}.dmp`, and the row's `filename`
//!   cleared (recorded in `legacy_coredump_files`) with a parse job queued.
//!
//! Problems with one item are warnings and the run goes on; the database or the bucket failing is
//! an error that stops the run (what was done stays done; a rerun continues).

mod coredumps;
mod firmware;
pub mod report;

use std::path::PathBuf;

use crate::db::adopt::{self, LegacyFilenames};
use crate::db::{legacy, Db, DbError};
use crate::storage::{Storage, StorageError};
use report::{Reporter, Summary};

/// What to migrate and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub assets_dir: Option<PathBuf>,
    pub coredumps_dir: Option<PathBuf>,
    pub dry_run: bool,
    /// `MAX_FIRMWARE_BYTES`: the largest bundle entry accepted, as for uploads.
    pub max_entry_bytes: u64,
    /// How many core dumps are uploaded at once.
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateToS3Error {
    #[error("Migration failed: {0}")]
    Db(#[from] DbError),
    #[error("Migration failed: {0}")]
    Storage(#[from] StorageError),
    #[error("Migration failed: cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for MigrateToS3Error {
    fn from(e: sqlx::Error) -> Self {
        MigrateToS3Error::Db(DbError::from(e))
    }
}

/// A run the database or the bucket stopped, with what it had done until then (kept: a rerun
/// carries on).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunStopped {
    pub error: MigrateToS3Error,
    pub summary: Summary,
}

/// Runs both phases and returns the summary (also when items were skipped).
pub async fn run(db: &Db, storage: &Storage, options: &Options) -> Result<Summary, RunStopped> {
    let reporter = Reporter::new(options.dry_run);
    let result = run_phases(db, storage, options, &reporter).await;
    let summary = reporter.finish();
    match result {
        Ok(()) => Ok(summary),
        Err(error) => Err(RunStopped { error, summary }),
    }
}

async fn run_phases(
    db: &Db,
    storage: &Storage,
    options: &Options,
    reporter: &Reporter,
) -> Result<(), MigrateToS3Error> {
    match &options.assets_dir {
        Some(dir) => firmware::migrate(db, storage, dir, options, reporter).await?,
        None => reporter.note("ASSETS_DIR is not set: no firmware to migrate".to_string()),
    }
    match &options.coredumps_dir {
        Some(dir) => coredumps::migrate(db, storage, dir, options, reporter).await?,
        None => reporter.note("COREDUMPS_DIR is not set: no core dumps to migrate".to_string()),
    }
    finish_legacy_column(db, reporter).await?;

    let mut tx = db.begin().await?;
    for (code, version) in legacy::unstored_current_versions(&mut tx).await? {
        reporter.warn(format!(
            "DeviceModel {code}'s current version {version} is not stored (no bundle of it was \
             migrated); devices get 404 for its firmware until that version is uploaded or another \
             one is made current"
        ));
    }
    Ok(())
}

/// After a real run: drop `coredumps.filename` if no row needs it any more, or say which rows
/// still do (their files were not in `COREDUMPS_DIR`).
async fn finish_legacy_column(db: &Db, reporter: &Reporter) -> Result<(), MigrateToS3Error> {
    let Db::Postgres(pool) = db else {
        return Ok(());
    };
    if reporter.dry_run() {
        if adopt::has_filename_column(db).await? {
            reporter.note(
                "coredumps.filename would be dropped if every legacy core dump was migrated"
                    .to_string(),
            );
        }
        return Ok(());
    }
    match adopt::drop_filename_if_unused(pool).await? {
        LegacyFilenames::Absent => {}
        LegacyFilenames::Busy => reporter.note(
            "Every legacy core dump is in the bucket; coredumps.filename is dropped by the next \
             run (the table was busy)"
                .to_string(),
        ),
        LegacyFilenames::Dropped => reporter.note(
            "Every legacy core dump is in the bucket: dropped the coredumps.filename column"
                .to_string(),
        ),
        LegacyFilenames::Remaining(_) => {
            let mut tx = db.begin().await?;
            let (total, sample) = legacy::remaining_files(&mut tx, 5).await?;
            let sample: Vec<String> = sample.iter().map(|(k, f)| format!("{k}/{f}")).collect();
            reporter.warn(format!(
                "{total} core dump row(s) still name a legacy file that was not found in \
                 COREDUMPS_DIR (e.g. {}); coredumps.filename is kept until they are migrated \
                 or deleted",
                sample.join(", ")
            ));
        }
    }
    Ok(())
}

/// The entries of a model's or device's directory, or none with a warning when it cannot be
/// read (`lost+found` on a mounted volume, say): one such directory must not stop the phase on
/// every run.
fn subdirectory_entries(dir: &std::path::Path, reporter: &Reporter) -> Vec<std::fs::DirEntry> {
    match sorted_entries(dir) {
        Ok(entries) => entries.unwrap_or_default(),
        Err(MigrateToS3Error::Io { path, source }) => {
            reporter.warn(format!("cannot read {}: {source}; skipped", path.display()));
            Vec::new()
        }
        Err(e) => {
            reporter.warn(format!("{e}; skipped"));
            Vec::new()
        }
    }
}

/// The entries of a directory, sorted by name; `None` when it does not exist.
fn sorted_entries(
    dir: &std::path::Path,
) -> Result<Option<Vec<std::fs::DirEntry>>, MigrateToS3Error> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MigrateToS3Error::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut entries =
        read.collect::<Result<Vec<_>, _>>()
            .map_err(|source| MigrateToS3Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    entries.sort_by_key(|e| e.file_name());
    Ok(Some(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subdirectory_that_cannot_be_read_is_a_warning_not_the_end_of_the_run() {
        let dir = tempfile::tempdir().unwrap();
        // read_dir fails on a file as it does on `lost+found` for a user without access (the
        // tests run as root, for whom permissions never fail).
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let reporter = Reporter::new(false);
        assert!(subdirectory_entries(&file, &reporter).is_empty());
        let summary = reporter.finish();
        assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
        assert!(
            summary.warnings[0].contains("not-a-directory")
                && summary.warnings[0].ends_with("skipped"),
            "{:?}",
            summary.warnings
        );
        // A directory that is there is listed as before.
        std::fs::create_dir(dir.path().join("device")).unwrap();
        let reporter = Reporter::new(false);
        assert_eq!(subdirectory_entries(dir.path(), &reporter).len(), 2);
        assert!(reporter.finish().warnings.is_empty());
    }
}
