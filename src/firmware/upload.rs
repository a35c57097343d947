//! Storing an uploaded bundle in one pass (SPEC §4 golden rule 1, §7): the artifacts go to the
//! store while the rest of the bundle is still being checked.
//!
//! The received body ([`Spool`]) is validated on a blocking thread ([`bundle::validate_each`]),
//! which hands out each artifact as soon as every check that concerns it has passed: the image
//! first (it names the version, and so the keys), then the ELF, `version.json`, the map and
//! `sdkconfig`. Meanwhile the transaction is opened and the model row locked. Once the image is
//! known good and its version is not stored yet, pending deletions of the five keys are
//! cancelled (the outbox invariant) and each artifact's PUT starts the moment it arrives, all in
//! parallel. When validation has finished, the row and the current version are written, and the
//! versions retention may prune are read, in the transaction *while the PUTs are still running*;
//! retention itself, the devices' notification and the event come after the last PUT, just before
//! the commit (retention locks the versions it prunes or spares, and core-dump uploads reporting
//! them wait for those locks; the notification's delay for the other processes' caches counts
//! from about the commit). Retention's reads cannot go stale meanwhile: every change to a model's
//! versions holds the model lock.
//!
//! Nothing is left half-written: if validation fails after PUTs started, or a PUT or a row write
//! fails, the in-flight PUTs are awaited, whatever was written is deleted (best-effort, still under
//! the model lock, so it can only be this upload's objects: the version had no row when it was
//! looked up under that lock), and the transaction rolls back. A version already stored writes no
//! object: its artifacts are hashed to completion first and compared (identical: current again,
//! `uploaded_at` bumped; different: 409).
//!
//! Memory: one upload holds its body (in memory up to [`SPOOL_IN_MEMORY`], else in a temporary
//! file) and the artifacts whose PUTs are in flight (in memory up to
//! [`bundle::MEMORY_THRESHOLD`] each, else a temporary file streamed as a multipart upload); an
//! artifact is dropped as soon as its PUT is done. The HTTP layer admits four uploads at once.
//!
//! Each step's time goes to `firmware_upload_step_duration_seconds` (see `crate::telemetry`).

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::bundle::{self, BundleError, BundleFacts, Entry, Spool, Validated, Validation};
use super::early::{EarlyFailure, EarlyImage, EarlyPut};
use super::store::{self, Effects, StoreError, Stored};
use crate::db::firmware_versions as fw;
use crate::db::{Db, Tx};
use crate::layout::{firmware_key, firmware_keys, Artifact};
use crate::notify::Notifier;
use crate::outbox;
use crate::storage::{ObjectKey, Storage};

/// Bodies up to this size are received into memory; larger ones into a temporary file.
pub const SPOOL_IN_MEMORY: u64 = 8 * 1024 * 1024;

/// What the upload is for and within which limits.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// `MAX_FIRMWARE_BYTES`: the most an entry may hold uncompressed.
    pub max_entry_bytes: u64,
    /// `MAX_FIRMWARES`.
    pub keep: u32,
}

/// A bundle as received: the body, and the early path that saw it arrive (`None` where it does
/// not apply, see [`super::early`]).
pub struct Received {
    pub spool: Spool,
    pub early: Option<EarlyImage>,
}

/// Validates and stores the bundle `received` as a version of model `model_id` and makes it
/// current. The process's lookup caches learn of it afterwards, also after a failure (the commit
/// may have happened).
pub async fn upload_bundle(
    db: &Db,
    storage: &Storage,
    effects: Effects<'_>,
    model_id: i64,
    model_code: &str,
    received: Received,
    limits: UploadLimits,
) -> Result<Stored, StoreError> {
    let started = Instant::now();
    let stored = upload_locked(
        db,
        storage,
        effects.notifier,
        model_id,
        model_code,
        received,
        limits,
    )
    .await;
    effects.caches.model_firmware_changed(model_id);
    record_step("pipeline", started.elapsed());
    stored
}

pub(super) fn record_step(step: &'static str, took: Duration) {
    metrics::histogram!(crate::telemetry::FIRMWARE_UPLOAD_STEP_DURATION, "step" => step)
        .record(took.as_secs_f64());
}

/// Awaits `future` and records how long it took as `step`.
async fn timed<T>(step: &'static str, future: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let result = future.await;
    record_step(step, started.elapsed());
    result
}

async fn upload_locked(
    db: &Db,
    storage: &Storage,
    notifier: Notifier,
    model_id: i64,
    model_code: &str,
    Received { spool, early }: Received,
    limits: UploadLimits,
) -> Result<Stored, StoreError> {
    let mut validator = Validator::start(spool, model_code, limits.max_entry_bytes);
    let early = match early {
        Some(early) => early.locked().await,
        None => None,
    };
    let (mut tx, mut model, early) = match early {
        Some(locked) => (
            locked.tx,
            locked.model,
            Some((locked.version, locked.existing, locked.put)),
        ),
        None => {
            let (tx, model) = timed("lock", store::begin_locked(db, model_id)).await?;
            (tx, model, None)
        }
    };

    // The image comes first: it names the version, and with it the keys.
    let validated_image = validator.next().await;
    // What the early path looked up and started, if it read this version (see `early`).
    let (early_lookup, early_put) = match early {
        Some((early_version, existing, put)) => {
            let same = matches!(&validated_image, Some(Validated::Image { version, .. }) if *version == early_version);
            if same {
                (Some(existing), put)
            } else {
                // Not the bundle's image (or no image at all): what the early path stored is
                // not ours to keep, and the deletions it withdrew were for another version's
                // keys. Undo both (the delete still under the lock), then lock afresh, unless
                // validation failed: its answer needs no lock.
                if let Some(put) = put {
                    put.discard(storage).await;
                }
                drop(tx);
                if !matches!(validated_image, Some(Validated::Image { .. })) {
                    return Err(validator.failure().await);
                }
                // The model as it is now: another change may have come in between.
                (tx, model) = timed("lock", store::begin_locked(db, model_id)).await?;
                (None, None)
            }
        }
        None => (None, None),
    };
    let (version, app, bin) = match validated_image {
        Some(Validated::Image { version, app, bin }) => (version, app, bin),
        _ => return Err(validator.failure().await),
    };
    let existing = match early_lookup {
        Some(existing) => existing,
        None => timed("lock", fw::get(&mut tx, model_id, version.as_str())).await?,
    };
    let mut artifacts = vec![bin.facts()];

    let Some(existing) = existing else {
        // A new version: its keys are ours while we hold the model lock.
        let key = |artifact| firmware_key(&model.code, version.as_str(), artifact);
        let mut puts = Puts::default();
        match early_put {
            // The early path withdrew the pending deletions already.
            Some(put) => puts.adopt(storage, put, bin),
            None => {
                let keys = firmware_keys(&model.code, version.as_str())?;
                // Architecture invariant (src/outbox.rs): withdraw pending deletions of these
                // keys (a version deleted earlier and uploaded again) before writing them.
                outbox::cancel_deletions(&mut tx, &keys).await?;
                puts.start(storage, key(Artifact::Bin)?, bin);
            }
        }
        // The five keys were built above, so this cannot fail; if it did, the PUTs already
        // started are still waited for and cleaned up like any other failure.
        let mut unkeyed = None;
        while let Some(validated) = validator.next().await {
            if let Validated::Artifact(entry) = validated {
                artifacts.push(entry.facts());
                match key(entry.artifact) {
                    Ok(key) => puts.start(storage, key, entry),
                    Err(e) => {
                        unkeyed.get_or_insert(StoreError::from(e));
                    }
                }
            }
        }
        let validated = validator.finish().await;
        if let Some(e) = validated.err().or(unkeyed) {
            puts.wait().await.ok();
            puts.clean_up(storage).await;
            return Err(e);
        }
        let facts = BundleFacts {
            version,
            app,
            artifacts,
        };
        let stored = write_rows_while_putting(&mut tx, notifier, &model, &facts, limits, &mut puts);
        let pruned = match stored.await {
            Ok(pruned) => pruned,
            Err(e) => {
                puts.clean_up(storage).await;
                tracing::warn!(error = %e, cleaned_up = puts.written.len(), "firmware_upload_failed");
                return Err(e);
            }
        };
        return commit(tx, model, facts, true, pruned).await;
    };

    // A stored version: nothing is written unless the content is identical, and then no object.
    while let Some(validated) = validator.next().await {
        if let Validated::Artifact(entry) = validated {
            artifacts.push(entry.facts());
        }
    }
    validator.finish().await?;
    if !store::has_artifacts(&existing, &artifacts) {
        return Err(store::different_content(version.as_str(), &model.code));
    }
    let facts = BundleFacts {
        version,
        app,
        artifacts,
    };
    let pruned = timed(
        "rows",
        store::record_version(
            &mut tx,
            notifier,
            &model,
            &facts,
            Some(&existing),
            limits.keep,
        ),
    )
    .await?;
    commit(tx, model, facts, false, pruned).await
}

/// Writes the rows (as [`store::record_version`]) while the PUTs finish, then applies retention
/// and queues the notification once they have (retention's locks on the versions it prunes or
/// spares then last only until the commit); fails with the first error. The caller cleans up on
/// failure.
async fn write_rows_while_putting(
    tx: &mut Tx,
    notifier: Notifier,
    model: &fw::ModelFirmware,
    facts: &BundleFacts,
    limits: UploadLimits,
    puts: &mut Puts,
) -> Result<super::retention::Pruned, StoreError> {
    let rows = timed(
        "rows",
        store::record_rows(tx, model, facts, None, limits.keep),
    );
    let (candidates, uploaded) = tokio::join!(rows, puts.wait());
    uploaded?;
    let candidates = candidates?;
    timed(
        "retention",
        store::finish_version(tx, notifier, model, facts, true, candidates),
    )
    .await
}

async fn commit(
    tx: Tx,
    model: fw::ModelFirmware,
    facts: BundleFacts,
    created: bool,
    pruned: super::retention::Pruned,
) -> Result<Stored, StoreError> {
    // A failed commit leaves the objects: the commit may have happened (an orphan is tolerated,
    // a row without its objects is not).
    timed("commit", tx.commit()).await?;
    let stored = Stored {
        model_id: model.id,
        model_code: model.code,
        version: facts.version.as_str().to_string(),
        created,
        pruned,
    };
    store::log_stored(&stored);
    Ok(stored)
}

/// The validation running on a blocking thread, and the artifacts it hands out.
struct Validator {
    validated: tokio::sync::mpsc::Receiver<Validated>,
    task: tokio::task::JoinHandle<Result<Validation, BundleError>>,
}

impl Validator {
    fn start(spool: Spool, model_code: &str, max_entry_bytes: u64) -> Self {
        // Five artifacts at most: sending never waits.
        let (sender, validated) = tokio::sync::mpsc::channel(Artifact::ALL.len());
        let code = model_code.to_string();
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = bundle::validate_each(spool, &code, max_entry_bytes, &mut |artifact| {
                sender
                    .blocking_send(artifact)
                    .map_err(|_| BundleError::Io(std::io::Error::other("the upload was abandoned")))
            });
            if let Ok(validation) = &result {
                record_step("hash", validation.hashing);
                record_step(
                    "validate",
                    started.elapsed().saturating_sub(validation.hashing),
                );
            }
            result
        });
        Validator { validated, task }
    }

    /// The next artifact known good; `None` when validation has ended (see [`Self::finish`]).
    async fn next(&mut self) -> Option<Validated> {
        self.validated.recv().await
    }

    /// How validation ended.
    async fn finish(self) -> Result<Validation, StoreError> {
        match self.task.await {
            Ok(result) => Ok(result?),
            Err(e) => {
                tracing::error!(error = %e, "firmware_validation_panicked");
                Err(StoreError::Io(std::io::Error::other(
                    "firmware validation panicked",
                )))
            }
        }
    }

    /// Why validation ended without handing out the image.
    async fn failure(self) -> StoreError {
        match self.finish().await {
            Err(e) => e,
            Ok(_) => StoreError::Io(std::io::Error::other(
                "firmware validation ended without an image",
            )),
        }
    }
}

/// The artifact PUTs of one upload, running in parallel.
#[derive(Default)]
struct Puts {
    running: JoinSet<(ObjectKey, Result<(), StoreError>)>,
    /// Keys a PUT was started for (a failed PUT whose answer was lost may have stored its
    /// object; deleting a missing object succeeds).
    written: Vec<ObjectKey>,
    first_started: Option<Instant>,
}

impl Puts {
    fn start(&mut self, storage: &Storage, key: ObjectKey, entry: Entry) {
        self.first_started.get_or_insert_with(Instant::now);
        self.written.push(key.clone());
        let storage = storage.clone();
        self.running.spawn(async move {
            let result = store::upload_one(&storage, &key, entry).await;
            (key, result)
        });
    }

    /// Takes over the image's early PUT (see `early`): kept when it stored exactly the validated
    /// image `bin` (read from the same place of the body, see `bundle::ZipOrigin`). Otherwise
    /// `bin` is PUT the ordinary way, with the store client's retries: when the tap gave up,
    /// when it streamed other bytes (a ZIP whose first local header is not the entry its central
    /// directory names: validation, like every ZIP reader, goes by the central directory; that
    /// PUT is withheld one byte short, so no store can commit it, even late), and when the
    /// streamed PUT failed (a store that times out a slow body, or a transient error the single
    /// streamed request could not retry; what it may still commit is this very image).
    fn adopt(&mut self, storage: &Storage, put: EarlyPut, bin: Entry) {
        let started = Instant::now();
        self.first_started.get_or_insert(started);
        self.written.push(put.key.clone());
        let storage = storage.clone();
        self.running.spawn(async move {
            let key = put.key.clone();
            let kept = match put.complete(&bin.origin).await {
                Ok(()) => true,
                Err(EarlyFailure::NotTheImage) => {
                    let reason = "the streamed image is not the validated one";
                    tracing::info!(reason, "firmware_early_put_replaced");
                    false
                }
                Err(EarlyFailure::Tap) => {
                    tracing::info!(reason = "the tap gave up", "firmware_early_put_replaced");
                    false
                }
                Err(EarlyFailure::Store(e)) => {
                    tracing::warn!(error = %e, "firmware_early_put_failed_retrying");
                    false
                }
            };
            let result = if kept {
                record_step("early_put", started.elapsed());
                Ok(())
            } else {
                store::upload_one(&storage, &key, bin).await
            };
            (key, result)
        });
    }

    /// Waits for every PUT started; the first failure, if any.
    async fn wait(&mut self) -> Result<(), StoreError> {
        let mut first_error = None;
        while let Some(joined) = self.running.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(StoreError::Io(std::io::Error::other(format!(
                        "an artifact upload task failed: {e}"
                    ))));
                }
            }
        }
        if let Some(started) = self.first_started.take() {
            record_step("put", started.elapsed());
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes what was written (best-effort: what fails is left for `reconcile`, an orphan with
    /// no row being tolerated transiently, SPEC §4). Call after [`Self::wait`], with the
    /// transaction (and the model lock) still held.
    async fn clean_up(&mut self, storage: &Storage) {
        if self.written.is_empty() {
            return;
        }
        for (key, result) in self
            .written
            .iter()
            .zip(storage.delete_many(&self.written).await)
        {
            if let Err(e) = result {
                tracing::warn!(object_key = %key, error = %e, "firmware_upload_cleanup_failed");
            }
        }
    }
}
