//! The core-dump phase: `COREDUMPS_DIR/{device_key}/{filename}` → `coredumps/{key}/{id}.dmp`.
//!
//! Per file: find the row of that device still naming the file (none: an orphan, or moved by an
//! earlier run according to `legacy_coredump_files`), upload the file, then in one transaction
//! clear the row's `filename`, record the file, and queue a parse unless the row is `PARSED` (a
//! report from the Python service's parser is kept; the reparse endpoint replaces it on request).
//! A crash between the upload and the commit leaves the row naming its file: the rerun uploads it
//! again over the same key.

use std::path::{Path, PathBuf};

use futures::StreamExt;

use super::report::{Kind, Outcome, Reporter};
use super::{sorted_entries, subdirectory_entries, MigrateToS3Error, Options};
use crate::coredumps::job as parse_job;
use crate::db::coredumps::{self as dumps, STATUS_PARSED};
use crate::db::{adopt, legacy, Db};
use crate::layout::coredump_key;
use crate::storage::{file_stream, Storage};

struct DumpFile {
    device_id: i64,
    device_key: String,
    filename: String,
    path: PathBuf,
}

impl DumpFile {
    fn item(&self) -> String {
        format!("{}/{}", self.device_key, self.filename)
    }
}

pub(super) async fn migrate(
    db: &Db,
    storage: &Storage,
    coredumps_dir: &Path,
    options: &Options,
    reporter: &Reporter,
) -> Result<(), MigrateToS3Error> {
    let legacy_column = adopt::has_filename_column(db).await?;
    let mut tx = db.begin().await?;
    let moved_before = legacy::any_migrated_file(&mut tx).await?;
    drop(tx);
    if !legacy_column && !moved_before {
        reporter.note(
            "No legacy core dumps in the database (coredumps.filename is absent), skipping \
             COREDUMPS_DIR"
                .to_string(),
        );
        return Ok(());
    }
    if !legacy_column {
        reporter.note(
            "Coredump migration already complete (coredumps.filename was dropped); checking \
             COREDUMPS_DIR against the files moved earlier"
                .to_string(),
        );
    }
    let Some(entries) = sorted_entries(coredumps_dir)? else {
        reporter.warn(format!(
            "COREDUMPS_DIR {} does not exist: no core dumps migrated",
            coredumps_dir.display()
        ));
        return Ok(());
    };
    let mut files = Vec::new();
    for entry in entries {
        let key = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let dmp_files: Vec<_> = subdirectory_entries(&path, reporter)
            .into_iter()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".dmp") && e.path().is_file())
            .collect();
        let mut tx = db.begin().await?;
        let device_id = legacy::device_id_by_key(&mut tx, &key).await?;
        drop(tx);
        let Some(device_id) = device_id else {
            let reason = format!("Device directory '{key}' has no matching DB record, skipping");
            for file in &dmp_files {
                let item = format!("{key}/{}", file.file_name().to_string_lossy());
                reporter.item(
                    Kind::Coredump,
                    &item,
                    Outcome::Skipped,
                    Some(&reason),
                    false,
                );
            }
            reporter.warn(reason);
            continue;
        };
        files.extend(dmp_files.into_iter().map(|e| DumpFile {
            device_id,
            device_key: key.clone(),
            filename: e.file_name().to_string_lossy().into_owned(),
            path: e.path(),
        }));
    }
    reporter.phase(Kind::Coredump, files.len());
    // After a failure (S3 or the database gone), no further file is started: the uploads in
    // flight finish, then the run stops. Trying every remaining file would wait out the S3
    // timeout for each of them first (hours for thousands of dumps).
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mut results = futures::stream::iter(files)
        .map(|file| {
            let failed = &failed;
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                migrate_one(db, storage, file, legacy_column, reporter).await
            }
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut first_error = None;
    while let Some(result) = results.next().await {
        if let Err(e) = result {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Uploads `file` to `key`; its length, or `None` when the file cannot be opened (reported as
/// skipped).
async fn upload(
    storage: &Storage,
    file: &DumpFile,
    key: &crate::storage::ObjectKey,
    reporter: &Reporter,
) -> Result<Option<u64>, MigrateToS3Error> {
    let unreadable = |error: &dyn std::fmt::Display| {
        let reason = format!("Cannot read coredump file {}: {error}", file.item());
        reporter.item(
            Kind::Coredump,
            &file.item(),
            Outcome::Skipped,
            Some(&reason),
            true,
        );
    };
    let source = std::fs::File::open(&file.path).and_then(|f| Ok((f.metadata()?.len(), f)));
    let (len, source) = match source {
        Ok(opened) => opened,
        Err(e) => {
            unreadable(&e);
            return Ok(None);
        }
    };
    let stream = file_stream(source).map_err(|source| MigrateToS3Error::Io {
        path: file.path.clone(),
        source,
    })?;
    let sent = match put_source(storage, key, stream).await? {
        Ok(sent) => sent,
        Err(read_error) => {
            // This file, not the store: the run goes on with the others (sorted, so stopping
            // here would stop every rerun at the same file).
            unreadable(&read_error);
            return Ok(None);
        }
    };
    if sent != len {
        // The file changed while it was read (still being written, truncated): the object is
        // what was read, and the row will say so.
        reporter.warn(format!(
            "Coredump {}: the file was {len} bytes when opened and {sent} bytes were uploaded",
            file.item()
        ));
    }
    Ok(Some(sent))
}

/// Puts `body` (a file's bytes) at `key`: the bytes written, or, when reading the file failed
/// (the store sees that only as a failed body), why. A store failure is an error.
async fn put_source(
    storage: &Storage,
    key: &crate::storage::ObjectKey,
    body: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> Result<Result<u64, String>, crate::storage::StorageError> {
    use futures::TryStreamExt;
    let read_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = read_error.clone();
    let body = body
        .inspect_err(move |e| {
            if let Ok(mut seen) = seen.lock() {
                *seen = Some(e.to_string());
            }
        })
        .boxed();
    let put = storage.put_stream(key, body).await;
    let read_error = read_error.lock().ok().and_then(|mut e| e.take());
    match (put, read_error) {
        (Ok(sent), _) => Ok(Ok(sent)),
        (Err(_), Some(read_error)) => Ok(Err(read_error)),
        (Err(e), None) => Err(e),
    }
}

/// Queues a parse of dump `coredump_id` if its last parse ended `ERROR` before `object` was
/// written; whether it did.
async fn parse_again_if_older(
    db: &Db,
    file: &DumpFile,
    coredump_id: i64,
    object: &crate::storage::ObjectInfo,
) -> Result<bool, MigrateToS3Error> {
    let mut tx = db.begin().await?;
    let stale = dumps::get(&mut tx, file.device_id, coredump_id)
        .await?
        .is_some_and(|row| {
            row.parse_status == dumps::STATUS_ERROR
                && row.parsed_at.is_some_and(|at| at < object.last_modified)
        });
    if stale {
        parse_job::requeue(&mut tx, file.device_id, coredump_id).await?;
    }
    tx.commit().await?;
    Ok(stale)
}

/// A file an earlier run moved (its dump `coredump_id`): unchanged if the store holds the object
/// or the dump is gone since (deleted, pruned); otherwise it is uploaded again. An earlier run
/// may have written to another store (no S3 settings, so the local default; a mistyped bucket),
/// and nothing else would ever write the object its row names.
async fn restore_if_missing(
    db: &Db,
    storage: &Storage,
    file: &DumpFile,
    coredump_id: i64,
    reporter: &Reporter,
) -> Result<(), MigrateToS3Error> {
    let item = file.item();
    let unchanged = || reporter.item(Kind::Coredump, &item, Outcome::Unchanged, None, false);
    let key = match coredump_key(&file.device_key, coredump_id) {
        Ok(key) => key,
        Err(_) => {
            unchanged();
            return Ok(());
        }
    };
    match storage.head(&key).await {
        Ok(object) => {
            // Stored, but the dump's parse failed before the object was last written: an
            // earlier run wrote it again and did not get to commit the new parse.
            if !reporter.dry_run() && parse_again_if_older(db, file, coredump_id, &object).await? {
                reporter.warn(format!(
                    "Coredump {item} failed to parse before its object was stored: parsing it again"
                ));
                reporter.item(Kind::Coredump, &item, Outcome::Migrated, None, false);
            } else {
                unchanged();
            }
            return Ok(());
        }
        Err(crate::storage::StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let still_there = async || -> Result<bool, MigrateToS3Error> {
        let mut tx = db.begin_read().await?;
        let row = dumps::get(&mut tx, file.device_id, coredump_id).await?;
        tx.commit().await?;
        Ok(row.is_some())
    };
    if !still_there().await? {
        unchanged();
        return Ok(());
    }
    if reporter.dry_run() {
        reporter.warn(format!(
            "Coredump {item} is recorded as migrated but missing from the object store: it \
             would be uploaded again to {key}"
        ));
        reporter.item(Kind::Coredump, &item, Outcome::Migrated, None, false);
        return Ok(());
    }
    let Some(size) = upload(storage, file, &key, reporter).await? else {
        return Ok(());
    };
    // The row as the object is now: its size what was uploaded, and a parse queued unless it has
    // the Python service's report. A parse that ran while the object was missing ended `ERROR`
    // ("missing from the object store") and must not stay so.
    let mut tx = db.begin().await?;
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let status = legacy::restored(&mut tx, file.device_id, coredump_id, size).await?;
    let Some(status) = status else {
        drop(tx);
        // Deleted while it was uploaded: the object belongs to nobody.
        if let Err(e) = storage.delete(&key).await {
            tracing::warn!(object_key = %key, error = %e, "migrate_to_s3_cleanup_failed");
        }
        unchanged();
        return Ok(());
    };
    if status != STATUS_PARSED {
        parse_job::requeue(&mut tx, file.device_id, coredump_id).await?;
    }
    tx.commit().await?;
    reporter.warn(format!(
        "Coredump {item} was recorded as migrated but missing from the object store: uploaded \
         again to {key}"
    ));
    reporter.item(Kind::Coredump, &item, Outcome::Migrated, None, false);
    Ok(())
}

/// Moves `file` to the dump rows that name it: one, or (the Python service's table had no unique
/// constraint on the name) each of several, every one to its own object.
async fn migrate_one(
    db: &Db,
    storage: &Storage,
    file: DumpFile,
    legacy_column: bool,
    reporter: &Reporter,
) -> Result<(), MigrateToS3Error> {
    let mut moved = 0;
    while let Some(next) =
        migrate_to_next_row(db, storage, &file, legacy_column, moved, reporter).await?
    {
        moved += 1;
        if next == Next::Stop || reporter.dry_run() {
            break;
        }
    }
    if moved > 1 {
        reporter.warn(format!(
            "Coredump {}: {moved} rows of the Python service's database named this file; each \
             got its own copy",
            file.item()
        ));
    }
    Ok(())
}

/// Whether [`migrate_to_next_row`] moved the file to a row and another may name it too.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    More,
    Stop,
}

/// Moves `file` to the first row still naming it. `None` when there was none to move it to (what
/// was reported instead: already moved, orphaned, skipped; `moved` rows were moved before in this
/// run), else whether another row may still name it.
async fn migrate_to_next_row(
    db: &Db,
    storage: &Storage,
    file: &DumpFile,
    legacy_column: bool,
    moved: usize,
    reporter: &Reporter,
) -> Result<Option<Next>, MigrateToS3Error> {
    let item = file.item();
    let mut tx = db.begin().await?;
    let row = if legacy_column {
        legacy::dump_by_filename(&mut tx, file.device_id, &file.filename).await?
    } else {
        None
    };
    let Some(row) = row else {
        if moved > 0 {
            return Ok(None);
        }
        match legacy::migrated_file(&mut tx, file.device_id, &file.filename).await? {
            Some(coredump_id) => {
                drop(tx);
                return restore_if_missing(db, storage, file, coredump_id, reporter)
                    .await
                    .map(|()| None);
            }
            None => {
                let reason = format!(
                    "Orphaned coredump file {item}: no matching DB record (no row names it: \
                     the Python service moved it already, or its dump was deleted); left in place"
                );
                reporter.item(Kind::Coredump, &item, Outcome::Skipped, Some(&reason), true);
            }
        }
        return Ok(None);
    };
    drop(tx);
    let key = match coredump_key(&file.device_key, row.id) {
        Ok(key) => key,
        Err(e) => {
            let reason = format!("Cannot migrate coredump {item}: {e}");
            reporter.item(Kind::Coredump, &item, Outcome::Skipped, Some(&reason), true);
            return Ok(None);
        }
    };
    if reporter.dry_run() {
        reporter.item(
            Kind::Coredump,
            &format!("{item} -> {key}"),
            Outcome::Migrated,
            None,
            false,
        );
        return Ok(Some(Next::Stop));
    }
    let Some(len) = upload(storage, file, &key, reporter).await? else {
        return Ok(None);
    };

    let size = i64::try_from(len).unwrap_or(i64::MAX);
    let mut tx = db.begin().await?;
    if !legacy::mark_migrated(&mut tx, file.device_id, row.id, &file.filename, size).await? {
        if legacy::migrated_file(&mut tx, file.device_id, &file.filename)
            .await?
            .is_some()
        {
            // A concurrent run moved it first (to the same key): nothing left to do.
            reporter.item(Kind::Coredump, &item, Outcome::Unchanged, None, false);
            return Ok(None);
        }
        drop(tx);
        // The row went away (deleted, pruned) or another run moved it while we uploaded: the
        // object we wrote belongs to nobody.
        if let Err(e) = storage.delete(&key).await {
            tracing::warn!(object_key = %key, error = %e, "migrate_to_s3_cleanup_failed");
        }
        let reason = format!("Coredump {item} changed while it was migrated; skipped");
        reporter.item(Kind::Coredump, &item, Outcome::Skipped, Some(&reason), true);
        return Ok(None);
    }
    if row.parse_status != STATUS_PARSED {
        parse_job::requeue(&mut tx, file.device_id, row.id).await?;
    }
    tx.commit().await?;
    if row.size != size {
        reporter.warn(format!(
            "Coredump {item}: the database said {} bytes, the file has {size}; the size was corrected",
            row.size
        ));
    }
    reporter.item(Kind::Coredump, &item, Outcome::Migrated, None, false);
    Ok(Some(Next::More))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_that_fails_while_read_is_its_own_failure_not_the_stores() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Storage = std::sync::Arc::new(
            crate::storage::backend::ObjectStoreBackend::local(dir.path()).unwrap(),
        );
        let key = crate::storage::ObjectKey::parse("coredumps/abcdefgh/1.dmp").unwrap();
        let failing = futures::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"first bytes")),
            Err(std::io::Error::other("Input/output error")),
        ])
        .boxed();
        let outcome = put_source(&storage, &key, failing).await.unwrap();
        assert_eq!(outcome, Err("Input/output error".to_string()));
        assert!(
            storage.head(&key).await.unwrap_err().is_not_found(),
            "half a file stored"
        );

        let whole = futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"a dump"))]).boxed();
        assert_eq!(put_source(&storage, &key, whole).await.unwrap(), Ok(6));

        // The store failing is the run's failure.
        let faulty = crate::storage::faulty::FaultyStorage::new(storage.clone());
        faulty.inject(crate::storage::faulty::Fault::always(
            crate::storage::Operation::Put,
        ));
        let faulty: Storage = std::sync::Arc::new(faulty);
        let whole = futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"a dump"))]).boxed();
        assert!(put_source(&faulty, &key, whole).await.is_err());
    }
}
