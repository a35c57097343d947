//! Accepting a dump from a device (SPEC §8): the checks, in the Python service's order and with
//! its messages, and the store sequence of golden rule 1.
//!
//! Checks: `chip` present, `firmware_version` present, both within their columns (50), the
//! version safe as an object key component; then (in `src/http/coredumps.rs`, which reads the
//! body) the body within `MAX_COREDUMP_BYTES` (413, decided from `Content-Length` before reading,
//! or as soon as the streamed body passes the limit — never by reading it all) and not empty.
//!
//! Store: on SQLite insert the `PENDING` row (flushed: the id is final), upload
//! `coredumps/{device_key}/{id}.dmp`, prune beyond `MAX_COREDUMPS`, enqueue the parse job, commit.
//! On PostgreSQL the id is reserved from the sequence and the object written *before* the
//! transaction, which then holds a pooled connection only for its own statements (see
//! [`store`]). Any failure rolls the transaction back and deletes an object that may already
//! have been written (best-effort; on SQLite while the transaction is still open, because a
//! rolled-back SQLite id can be handed out again and a late cleanup could hit the next dump's
//! object).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::handoff::Handoff;
use super::job::{ParsePayload, PARSE_JOB, PARSE_MAX_ATTEMPTS};
use super::retention;
use crate::db::{coredumps, Db, DbError, Tx};
use crate::layout::coredump_key;
use crate::storage::{InvalidKey, ObjectKey, Storage, StorageError};
use crate::{events, jobs, outbox};

/// Column width of `coredumps.chip` (and `firmware_version`, checked by `FirmwareVersion`).
pub const MAX_FIELD_LEN: usize = 50;
/// How long a failed upload's cleanup may hold the request.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a dump was not stored. The HTTP layer maps these to 400, 413, 404 and (for the database
/// or the object store) 503.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The query or the body is not acceptable (400) with this message.
    #[error("{0}")]
    Invalid(String),
    /// The body is larger than `MAX_COREDUMP_BYTES` (413).
    #[error("Coredump exceeds the maximum size of {0} bytes")]
    TooLarge(u64),
    /// The device was deleted after it authenticated.
    #[error("Device {0} was not found")]
    DeviceGone(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Key(#[from] InvalidKey),
}

fn invalid(message: impl Into<String>) -> IngestError {
    IngestError::Invalid(message.into())
}

/// The validated query of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpMeta {
    pub chip: String,
    pub firmware_version: String,
}

impl DumpMeta {
    /// Checks the query in the Python service's order; empty counts as missing.
    pub fn parse(chip: Option<&str>, firmware_version: Option<&str>) -> Result<Self, IngestError> {
        let chip = chip
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid("Missing required query parameter: chip"))?;
        let version = firmware_version
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid("Missing required query parameter: firmware_version"))?;
        if chip.chars().count() > MAX_FIELD_LEN {
            return Err(invalid(format!(
                "chip must be at most {MAX_FIELD_LEN} characters"
            )));
        }
        if chip.chars().any(char::is_control) {
            return Err(invalid("chip must not contain control characters"));
        }
        check_version(version)?;
        Ok(DumpMeta {
            chip: chip.to_string(),
            firmware_version: version.to_string(),
        })
    }
}

/// The reported version later names `firmware/{model}/{version}/firmware.elf`, so it must be a
/// safe key component (SPEC §3): rejected, never escaped. Same rules as stored firmware versions.
fn check_version(version: &str) -> Result<(), IngestError> {
    crate::fleet::FirmwareVersion::parse(version)
        .map(|_| ())
        .map_err(invalid)
}

/// The device a dump is uploaded for.
#[derive(Debug, Clone)]
pub struct Uploader<'a> {
    pub device_id: i64,
    pub device_key: &'a str,
    /// The device's model, for the `coredump_stored` event (a model's page listens for its own).
    pub device_model_id: i64,
}

/// Stores a validated dump (golden rule 1) and returns its id. `keep` is `MAX_COREDUMPS`. Each
/// step's time goes to `coredump_ingest_step_duration_seconds`. A stored dump is offered to
/// `handoff`, for its parse in this process.
pub async fn store(
    db: &Db,
    storage: &Storage,
    handoff: &Handoff,
    keep: u32,
    device: Uploader<'_>,
    meta: &DumpMeta,
    content: Bytes,
) -> Result<i64, IngestError> {
    let dump = content.clone();
    let (id, key) = match db {
        Db::Postgres(_) => store_with_reserved_id(db, storage, keep, device, meta, content).await,
        Db::Sqlite(_) => store_in_one_transaction(db, storage, keep, device, meta, content).await,
    }?;
    handoff.offer(key, &dump);
    Ok(id)
}

/// PostgreSQL: the id is taken from the table's sequence first (one statement, no transaction),
/// the object is written under it, and only then does a transaction insert the row, apply
/// retention and queue the parse job. A transaction (and with it one of the pool's connections)
/// is held for the database work only, never across the PUT: with the PUT inside, 32 devices
/// uploading at once queued for the pool's ten connections. A sequence never hands out an id
/// twice, so nothing else can own the key and no outbox deletion can be pending for it; if
/// anything after the PUT fails, the object is deleted again (an orphan, if that fails too, is
/// tolerated; a row without its object never exists).
///
/// Round trips: the id, (the PUT), `BEGIN`, the device's retention lock with the row (which also
/// reads the device's dump count), the pruning `DELETE` only when that count is over `keep`, one
/// statement for everything else (outbox entries, withdrawn parse jobs, the new parse job, the
/// event and its `NOTIFY`), `COMMIT`.
async fn store_with_reserved_id(
    db: &Db,
    storage: &Storage,
    keep: u32,
    device: Uploader<'_>,
    meta: &DumpMeta,
    content: Bytes,
) -> Result<(i64, ObjectKey), IngestError> {
    let size = content.len() as i64;
    let mut steps = Steps::start();
    let id = coredumps::reserve_id(db, device.device_key).await?;
    let key = coredump_key(device.device_key, id)?;
    steps.lap("insert");
    if let Err(e) = storage.put(&key, content).await {
        cleanup(storage, &key).await;
        return Err(e.into());
    }
    steps.lap("put");
    let recorded = async {
        let mut tx = db.begin().await?;
        let dumps = match &mut tx {
            Tx::Postgres(t) => {
                coredumps::lock_device_and_insert(t, id, &new_row(&device, meta, size)).await?
            }
            Tx::Sqlite(_) => {
                return Err(DbError::Other(sqlx::Error::Protocol(
                    "core-dump ids are reserved on PostgreSQL only".into(),
                ))
                .into())
            }
        };
        let Some(dumps) = dumps else {
            return Err(IngestError::DeviceGone(device.device_key.to_string()));
        };
        finish(
            keep,
            &mut tx,
            device.clone(),
            id,
            Retention::Locked { dumps },
        )
        .await?;
        steps.lap("record");
        Ok::<_, IngestError>(tx)
    }
    .await;
    let tx = match recorded {
        Ok(tx) => tx,
        Err(e) => {
            cleanup(storage, &key).await;
            return Err(e);
        }
    };
    commit(tx, &device, id, &key, size, &mut steps).await?;
    Ok((id, key))
}

/// SQLite (one writer at a time, in process): the row first (flushed, so the id is final), the
/// object, retention and the parse job, commit. A rolled-back SQLite id can be handed out again
/// (`sqlite_sequence` rolls back too), so a failed PUT does not roll back: its id is used up
/// ([`retire`]). A cleanup DELETE, or the failed PUT itself, still under way at the store when
/// the next upload took the same id could otherwise land on that dump's object after it was
/// answered 201. A failure after the PUT deletes the object while the transaction is still open,
/// before another upload can take the id, and rolls back.
async fn store_in_one_transaction(
    db: &Db,
    storage: &Storage,
    keep: u32,
    device: Uploader<'_>,
    meta: &DumpMeta,
    content: Bytes,
) -> Result<(i64, ObjectKey), IngestError> {
    let size = content.len() as i64;
    let mut steps = Steps::start();
    let mut tx = db.begin().await?;
    let id = insert_row(&mut tx, &device, meta, size).await?;
    let key = coredump_key(device.device_key, id)?;
    // Make sure no old deletion of this key is still pending (the outbox invariant for
    // re-created keys).
    outbox::cancel_deletions(&mut tx, std::slice::from_ref(&key)).await?;
    steps.lap("insert");
    if let Err(e) = storage.put(&key, content).await {
        retire(tx, storage, device.device_id, id, &key).await;
        return Err(e.into());
    }
    steps.lap("put");
    if let Err(e) = finish(keep, &mut tx, device.clone(), id, Retention::Unlocked).await {
        cleanup(storage, &key).await;
        drop(tx);
        return Err(e);
    }
    steps.lap("record");
    commit(tx, &device, id, &key, size, &mut steps).await?;
    Ok((id, key))
}

/// SQLite, after a failed PUT (the transaction holds only the row and the withdrawn deletions of
/// its key): deletes the row, queues the key's deletion in the outbox and commits, so the id is
/// never handed out again and whatever of this upload reaches the store late is deleted. If even
/// that fails, the object is deleted best-effort and the transaction rolled back.
async fn retire(mut tx: Tx, storage: &Storage, device_id: i64, id: i64, key: &ObjectKey) {
    let retired = async {
        coredumps::delete(&mut tx, device_id, id).await?;
        outbox::schedule_deletion(&mut tx, std::slice::from_ref(key)).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = retired {
        tracing::warn!(coredump_id = id, s3_key = %key, error = %e, "coredump_id_not_retired");
        cleanup(storage, key).await;
    }
}

fn new_row<'a>(device: &Uploader<'_>, meta: &'a DumpMeta, size: i64) -> coredumps::NewCoredump<'a> {
    coredumps::NewCoredump {
        device_id: device.device_id,
        chip: &meta.chip,
        firmware_version: &meta.firmware_version,
        size,
    }
}

/// Inserts the `PENDING` row and returns its id.
async fn insert_row(
    tx: &mut Tx,
    device: &Uploader<'_>,
    meta: &DumpMeta,
    size: i64,
) -> Result<i64, IngestError> {
    match coredumps::insert(tx, &new_row(device, meta, size)).await {
        Ok(id) => Ok(id),
        // The device was deleted after it authenticated.
        Err(e) if e.is_foreign_key_violation() => {
            Err(IngestError::DeviceGone(device.device_key.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

async fn commit(
    tx: Tx,
    device: &Uploader<'_>,
    id: i64,
    key: &ObjectKey,
    size: i64,
    steps: &mut Steps,
) -> Result<i64, IngestError> {
    if let Err(e) = tx.commit().await {
        // The commit may have succeeded even so (the answer was lost): leave the object, because
        // an orphan is tolerated (reconcile finds it) and a row without its object is not.
        tracing::warn!(coredump_id = id, s3_key = %key, error = %e, "coredump_commit_failed");
        return Err(e.into());
    }
    steps.lap("commit");
    tracing::info!(
        device_key = %device.device_key,
        coredump_id = id,
        s3_key = %key,
        size,
        "coredump_s3_upload"
    );
    Ok(id)
}

/// Times the steps of one upload into `coredump_ingest_step_duration_seconds`.
struct Steps(Instant);

impl Steps {
    fn start() -> Self {
        Steps(Instant::now())
    }

    fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        metrics::histogram!(crate::telemetry::COREDUMP_INGEST_STEP_DURATION, "step" => step)
            .record(now.duration_since(self.0).as_secs_f64());
        self.0 = now;
    }
}

/// Whether the transaction already holds the device's retention lock.
enum Retention {
    /// Held, and the device's `coredump_count` read under it, the new dump counted: within the
    /// limit, retention has nothing to prune and costs no statement.
    Locked {
        dumps: i64,
    },
    Unlocked,
}

/// What follows the upload inside the transaction: retention, then the parse job and the event.
async fn finish(
    keep: u32,
    tx: &mut Tx,
    device: Uploader<'_>,
    id: i64,
    lock: Retention,
) -> Result<(), IngestError> {
    let (device_id, key) = (device.device_id, device.device_key);
    let pruned = match lock {
        Retention::Locked { dumps } if dumps <= i64::from(keep) => retention::Pruned::default(),
        Retention::Locked { .. } => {
            retention::prune_locked_rows(tx, device_id, key, keep, id).await?
        }
        Retention::Unlocked => retention::prune_rows(tx, device_id, key, keep, id).await?,
    };
    let event = serde_json::json!({"id": id, "device_id": device.device_id,
                                   "device_key": device.device_key,
                                   "device_model_id": device.device_model_id});
    // The dumps retention pruned are deleted as an admin's delete is, and said so the same way
    // (`manage::deleted`): a page open on one of them learns it is gone.
    let pruned_event = (!pruned.ids.is_empty())
        .then(|| serde_json::json!({"ids": pruned.ids, "device_id": device.device_id}));
    let withdrawn = match tx {
        Tx::Postgres(t) => {
            let withdrawn: Vec<String> = pruned
                .parses
                .iter()
                .map(jobs::payload_text)
                .collect::<Result<_, _>>()?;
            let pruned_event = pruned_event.map(|event| event.to_string());
            let record = coredumps::UploadRecord {
                now: crate::db::now(),
                deletions: &pruned.keys,
                job_kind: PARSE_JOB,
                withdrawn_job_payloads: &withdrawn,
                job_payload: &jobs::payload_text(&ParsePayload::first(id))?,
                job_max_attempts: PARSE_MAX_ATTEMPTS,
                event_kind: STORED_EVENT,
                event_payload: &event.to_string(),
                pruned_event: pruned_event.as_deref().map(|p| (DELETED_EVENT, p)),
                notify_channel: events::CHANNEL,
            };
            let withdrawn = coredumps::record_upload_postgres(t, &record).await?;
            u64::try_from(withdrawn).unwrap_or(0)
        }
        Tx::Sqlite(_) => {
            outbox::schedule_deletion(tx, &pruned.keys).await?;
            let withdrawn = super::job::cancel(tx, &pruned.parses).await?;
            super::job::enqueue(tx, id).await?;
            events::record(tx, STORED_EVENT, &event).await?;
            if let Some(deleted) = &pruned_event {
                events::record(tx, DELETED_EVENT, deleted).await?;
            }
            withdrawn
        }
    };
    retention::log_pruned(device.device_key, &pruned, withdrawn);
    Ok(())
}

const STORED_EVENT: &str = "coredump_stored";
const DELETED_EVENT: &str = "coredump_deleted";

/// Best-effort removal of an object whose row will not be committed.
async fn cleanup(storage: &Storage, key: &ObjectKey) {
    match tokio::time::timeout(CLEANUP_TIMEOUT, storage.delete(key)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(s3_key = %key, error = %e, "coredump_cleanup_failed"),
        Err(_) => tracing::warn!(s3_key = %key, "coredump_cleanup_timed_out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<DumpMeta, IngestError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn query_checks_come_in_the_python_services_order() {
        assert_eq!(
            message(DumpMeta::parse(None, None)),
            "Missing required query parameter: chip"
        );
        assert_eq!(
            message(DumpMeta::parse(Some(""), Some("1.0"))),
            "Missing required query parameter: chip"
        );
        assert_eq!(
            message(DumpMeta::parse(Some("esp32"), None)),
            "Missing required query parameter: firmware_version"
        );
        assert!(message(DumpMeta::parse(Some(&"x".repeat(51)), Some("1"))).contains("chip"));
        assert!(DumpMeta::parse(Some(&"x".repeat(50)), Some(&"1".repeat(50))).is_ok());
    }

    #[test]
    fn versions_that_could_escape_their_key_are_rejected() {
        for bad in ["../x", "1/2", "..", ".", "a\nb", "a\\b", &"9".repeat(51)] {
            assert!(
                DumpMeta::parse(Some("esp32"), Some(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
        for ok in ["1.0.0", "v2.3.4-rc.1+build.7", "2024.11.29"] {
            assert!(DumpMeta::parse(Some("esp32"), Some(ok)).is_ok(), "{ok}");
        }
    }
}
