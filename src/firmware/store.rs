//! Storing a validated bundle (golden rule 1) and changing which versions a model has.
//!
//! Every operation locks the model row first ([`fw::lock_model`]), so uploads, retention,
//! rollbacks and deletes of one model are serialised by the database (also across processes);
//! nothing relies on conditional writes to the object store.
//!
//! An upload of a new version (`crate::firmware::upload`, and [`import_bundle`] for
//! `migrate-to-s3`): cancel pending deletions of its five keys, upload the five artifacts
//! concurrently, insert the row, point the model at it, prune (rows now, objects via the outbox),
//! commit. If any upload fails, the artifacts that did get written are deleted best-effort *while
//! the transaction still holds the model lock* — so a concurrent upload of the same version cannot
//! have written them — and the transaction rolls back. A version already stored is never
//! re-uploaded: identical content (same five SHA-256s) makes it current again and bumps
//! `uploaded_at`; different content is a conflict.

use super::bundle::{ArtifactFacts, Bundle, BundleError, BundleFacts, Content, Entry};
use super::retention::{self, Pruned, RetentionError};
use crate::db::firmware_versions::{self as fw, MODEL_VERSION_UNIQUE};
use crate::db::{legacy, Db, DbError, Tx};
use crate::layout::firmware_keys;
use crate::lookup_cache::Invalidation;
use crate::notify::Notifier;
use crate::storage::{InvalidKey, ObjectKey, Storage, StorageError};
use crate::{events, outbox};
use serde_json::json;

/// Why a firmware operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DeviceModel {0} was not found")]
    ModelNotFound(i64),
    #[error("{0}")]
    VersionNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Key(#[from] InvalidKey),
    #[error("reading a spooled artifact failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bundle failed a check (`crate::firmware::upload` validates while it stores).
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl From<RetentionError> for StoreError {
    fn from(e: RetentionError) -> Self {
        match e {
            RetentionError::Db(e) => StoreError::Db(e),
            RetentionError::Key(e) => StoreError::Key(e),
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub model_id: i64,
    pub model_code: String,
    pub version: String,
    /// False when the version was already stored with identical content.
    pub created: bool,
    pub pruned: Pruned,
}

/// The rows of an upload, once its bundle is validated and the model locked: the version row
/// (inserted, or `touch`ed for an identical re-upload: `existing`), the model's current version
/// (and the notification when it changes), retention, and the `firmware_uploaded` event. Returns
/// what retention pruned. The objects are the caller's business (`crate::firmware::upload`).
pub(super) async fn record_version(
    tx: &mut Tx,
    notifier: Notifier,
    model: &fw::ModelFirmware,
    facts: &BundleFacts,
    existing: Option<&fw::FirmwareVersionRow>,
    keep: u32,
) -> Result<Pruned, StoreError> {
    let candidates = record_rows(tx, model, facts, existing, keep).await?;
    finish_version(tx, notifier, model, facts, existing.is_none(), candidates).await
}

/// The first part of [`record_version`]: the version's row (new, or touched) and the model's
/// current version; returns the versions retention will consider (beyond the newest `keep`, read
/// without locking them). An upload writes these while its PUTs run.
pub(super) async fn record_rows(
    tx: &mut Tx,
    model: &fw::ModelFirmware,
    facts: &BundleFacts,
    existing: Option<&fw::FirmwareVersionRow>,
    keep: u32,
) -> Result<Vec<String>, StoreError> {
    let version = facts.version.as_str();
    match existing {
        Some(row) => fw::touch(tx, row.id).await?,
        None => {
            fw::insert(tx, model.id, &facts.row())
                .await
                .map_err(|e| concurrent_conflict(e, version, &model.code))?;
        }
    }
    fw::set_current(tx, model.id, version).await?;
    Ok(retention::candidates(tx, model.id, version, keep).await?)
}

/// The second part of [`record_version`]: retention of the `candidates` that [`record_rows`]
/// returned, the devices' notification when the current version changed, and the event. An
/// upload applies it after its PUTs, just before the commit: retention holds the versions it
/// prunes or spares locked until then (see `retention::enforce`), and core-dump uploads reporting
/// them wait for it; and the notification's delay (`DEVICE_LOOKUP_CACHE_SECONDS`, for the other
/// processes' caches to learn of the new version) counts from about the commit, not from before
/// PUTs that may take seconds, which would send the message while they still serve the old image.
pub(super) async fn finish_version(
    tx: &mut Tx,
    notifier: Notifier,
    model: &fw::ModelFirmware,
    facts: &BundleFacts,
    created: bool,
    candidates: Vec<String>,
) -> Result<Pruned, StoreError> {
    let version = facts.version.as_str();
    if model.firmware_version.as_deref() != Some(version) {
        notifier.firmware_changed(tx, model.id, version).await?;
    }
    let pruned = retention::enforce(tx, model.id, &model.code, candidates).await?;
    events::record(
        tx,
        "firmware_uploaded",
        &json!({"device_model_id": model.id, "code": model.code, "version": version,
                "created": created, "pruned": pruned.versions}),
    )
    .await?;
    Ok(pruned)
}

/// The log lines of a committed upload.
pub(super) fn log_stored(stored: &Stored) {
    let pruned = &stored.pruned;
    if !pruned.versions.is_empty() || pruned.skipped_pending > 0 {
        tracing::info!(
            model_code = %stored.model_code,
            pruned_count = pruned.versions.len(),
            skipped_pending_count = pruned.skipped_pending,
            pruned_versions = ?pruned.versions,
            "firmware_retention_pruned"
        );
    }
    tracing::info!(model_code = %stored.model_code, version = %stored.version, created = stored.created,
        "firmware_uploaded");
}

/// The answer to a re-upload of a stored version with other content.
pub(super) fn different_content(version: &str, model_code: &str) -> StoreError {
    StoreError::Conflict(format!(
        "Firmware version {version} of DeviceModel {model_code} is already stored with different content; \
         give the new build its own version"
    ))
}

/// Opens a transaction and locks the model row in it (see the module comment).
pub(super) async fn begin_locked(
    db: &Db,
    model_id: i64,
) -> Result<(Tx, fw::ModelFirmware), StoreError> {
    let mut tx = db.begin().await?;
    let model = fw::lock_model(&mut tx, model_id)
        .await?
        .ok_or(StoreError::ModelNotFound(model_id))?;
    Ok((tx, model))
}

/// Whether a stored version has exactly the bundle's five artifacts.
fn is_identical(existing: &fw::FirmwareVersionRow, bundle: &Bundle) -> bool {
    has_artifacts(existing, &bundle.facts().artifacts)
}

/// Whether a stored version has exactly these artifacts (by SHA-256).
pub(super) fn has_artifacts(
    existing: &fw::FirmwareVersionRow,
    artifacts: &[ArtifactFacts],
) -> bool {
    artifacts.iter().all(|a| {
        existing
            .artifact(a.artifact)
            .sha256
            .is_some_and(|sha| sha == a.sha256)
    })
}

fn concurrent_conflict(e: DbError, version: &str, model_code: &str) -> StoreError {
    if e.violates(MODEL_VERSION_UNIQUE.0, MODEL_VERSION_UNIQUE.1) {
        StoreError::Conflict(format!(
            "Firmware version {version} of DeviceModel {model_code} was stored concurrently; retry"
        ))
    } else {
        e.into()
    }
}

/// What [`import_bundle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// A new version row and its five objects.
    Created,
    /// A row adopted from the Python service (no sizes or hashes) got its objects written again
    /// from the bundle and its facts recorded.
    FilledLegacyRow,
    /// The version was already stored with identical content: nothing written.
    Unchanged,
    /// The version's row was complete with identical content, but the store lacked some of its
    /// objects (an earlier run wrote them to another store, say): they were written again.
    Restored,
    /// An earlier run stored the version, and it was deleted or pruned since: not created again.
    DeletedSince,
}

/// What [`import_bundle`] will do with a bundle, given the stored row of its version (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPlan {
    /// No row: insert one and write the five objects.
    Create,
    /// A row without facts (adopted from the Python service), by id: rewrite its objects from the
    /// bundle and record the facts.
    FillLegacyRow(i64),
    /// Stored with identical content: nothing to do.
    Unchanged,
    /// Stored with different content: refused.
    Conflict,
    /// No row, but an earlier run stored it (`legacy_firmware_bundles`): deleted or pruned
    /// since, and left so.
    DeletedSince,
}

/// What [`import_bundle`] will do with `bundle`, read in `tx`; `migrate-to-s3 --dry-run` asks
/// the same question without writing.
pub async fn plan_import(
    tx: &mut Tx,
    model_id: i64,
    bundle: &Bundle,
) -> Result<ImportPlan, DbError> {
    let version = bundle.version.as_str();
    let existing = fw::get(tx, model_id, version).await?;
    let recorded = match existing {
        Some(_) => true,
        None => legacy::firmware_bundle_recorded(tx, model_id, version).await?,
    };
    Ok(import_plan(existing.as_ref(), recorded, bundle))
}

/// Decides an import, given the version's row and whether an earlier run stored it
/// ([`crate::db::legacy::firmware_bundle_recorded`]).
fn import_plan(
    existing: Option<&fw::FirmwareVersionRow>,
    recorded: bool,
    bundle: &Bundle,
) -> ImportPlan {
    match existing {
        None if recorded => ImportPlan::DeletedSince,
        None => ImportPlan::Create,
        Some(row) if is_identical(row, bundle) => ImportPlan::Unchanged,
        Some(row) if row.firmware_bin_sha256.is_none() => ImportPlan::FillLegacyRow(row.id),
        Some(_) => ImportPlan::Conflict,
    }
}

/// Stores a legacy bundle for `migrate-to-s3`: like [`store_bundle`] (validated bundle, model
/// lock, golden rule 1) but the model's current version is left alone, retention is not applied
/// (migration never deletes builds; the next upload prunes), the row keeps `uploaded_at`, and
/// re-running is a no-op. Different content under a stored version is a [`StoreError::Conflict`].
pub async fn import_bundle(
    db: &Db,
    storage: &Storage,
    model_id: i64,
    bundle: Bundle,
    uploaded_at: chrono::DateTime<chrono::Utc>,
) -> Result<Imported, StoreError> {
    let version = bundle.version.as_str().to_string();
    let (mut tx, model) = begin_locked(db, model_id).await?;
    let keys = firmware_keys(&model.code, &version)?;
    let (imported, cleanup) = match plan_import(&mut tx, model_id, &bundle).await? {
        ImportPlan::DeletedSince => return Ok(Imported::DeletedSince),
        // Recorded already; but the store may not hold the objects the row names (a first run
        // that went to the wrong bucket or the local default), and nothing else would write them.
        ImportPlan::Unchanged if all_stored(storage, &keys).await? => {
            return Ok(Imported::Unchanged)
        }
        ImportPlan::Unchanged => (Imported::Restored, Cleanup::KeepWritten),
        ImportPlan::FillLegacyRow(id) => {
            // The Python service may have stored a newer build under this version in the bucket
            // since this ZIP was written (it overwrote objects on re-upload): never replace it
            // with the older one.
            if let Some(conflict) =
                stored_build_differs(storage, &model.code, &version, &bundle).await?
            {
                return Err(StoreError::Conflict(conflict));
            }
            fw::record_facts(&mut tx, id, &bundle.row()).await?;
            // The keys held the legacy objects before: never delete them on failure.
            (Imported::FilledLegacyRow, Cleanup::KeepWritten)
        }
        ImportPlan::Conflict => {
            return Err(StoreError::Conflict(format!(
            "Firmware version {version} of DeviceModel {} is already stored with different content",
            model.code
        )))
        }
        ImportPlan::Create => {
            fw::insert_uploaded_at(&mut tx, model_id, &bundle.row(), uploaded_at)
                .await
                .map_err(|e| concurrent_conflict(e, &version, &model.code))?;
            (Imported::Created, Cleanup::DeleteWritten)
        }
    };
    outbox::cancel_deletions(&mut tx, &keys).await?;
    legacy::record_firmware_bundle(&mut tx, model_id, &version).await?;
    upload_all(storage, &keys, bundle.artifacts, &mut tx, cleanup).await?;
    events::record(
        &mut tx,
        "firmware_uploaded",
        &json!({"device_model_id": model_id, "code": model.code, "version": version,
                "created": imported == Imported::Created, "pruned": []}),
    )
    .await?;
    tx.commit().await?;
    Ok(imported)
}

/// Whether the store holds every one of `keys`.
pub async fn all_stored(
    storage: &Storage,
    keys: &[ObjectKey],
) -> Result<bool, crate::storage::StorageError> {
    for key in keys {
        match storage.head(key).await {
            Ok(_) => {}
            Err(crate::storage::StorageError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Why a legacy bundle must not be written over what the store holds for its version: the
/// store's image (if any) is another build. `None`: no image stored, or the same one.
pub async fn stored_build_differs(
    storage: &Storage,
    model_code: &str,
    version: &str,
    bundle: &Bundle,
) -> Result<Option<String>, StoreError> {
    use futures::StreamExt;
    use sha2::{Digest, Sha256};
    let key = crate::layout::firmware_key(model_code, version, crate::layout::Artifact::Bin)?;
    let mut read = match storage.get(&key, None).await {
        Ok(read) => read,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut hasher = Sha256::new();
    while let Some(chunk) = read.body.next().await {
        hasher.update(&chunk?);
    }
    let stored = hex::encode(hasher.finalize());
    let ours = bundle
        .facts()
        .artifacts
        .iter()
        .find(|a| a.artifact == crate::layout::Artifact::Bin)
        .map(|a| a.sha256.clone());
    Ok((ours.as_deref() != Some(stored.as_str())).then(|| {
        format!(
            "Firmware version {version} of DeviceModel {model_code}: the bucket holds another \
             build (firmware.bin SHA-256 {stored}) than this ZIP; the bucket's was kept"
        )
    }))
}

/// What [`upload_all`] does with the artifacts it wrote when another one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleanup {
    DeleteWritten,
    KeepWritten,
}

/// Uploads the artifacts concurrently. On any failure, deletes (best-effort, unless told to
/// keep them) what was written and returns the first error. `_tx` is borrowed so that the caller
/// still holds the transaction (and with it the model lock and the new row's unique slot) during
/// the cleanup: no concurrent upload of the same version can have written these keys meanwhile.
async fn upload_all(
    storage: &Storage,
    keys: &[ObjectKey],
    artifacts: Vec<Entry>,
    _tx: &mut Tx,
    cleanup: Cleanup,
) -> Result<(), StoreError> {
    let uploads = keys
        .iter()
        .zip(artifacts)
        .map(|(key, artifact)| upload_one(storage, key, artifact));
    let results = futures::future::join_all(uploads).await;
    let mut first_error = None;
    let mut written = Vec::new();
    for (key, result) in keys.iter().zip(results) {
        match result {
            Ok(()) => written.push(key.clone()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(error) = first_error else {
        return Ok(());
    };
    if cleanup == Cleanup::KeepWritten {
        tracing::warn!(error = %error, "firmware_upload_failed");
        return Err(error);
    }
    for (key, result) in written.iter().zip(storage.delete_many(&written).await) {
        if let Err(e) = result {
            // Left for `reconcile`: an orphan with no row is tolerated transiently (SPEC §4).
            tracing::warn!(object_key = %key, error = %e, "firmware_upload_cleanup_failed");
        }
    }
    tracing::warn!(error = %error, cleaned_up = written.len(), "firmware_upload_failed");
    Err(error)
}

pub(super) async fn upload_one(
    storage: &Storage,
    key: &ObjectKey,
    artifact: Entry,
) -> Result<(), StoreError> {
    match artifact.content {
        Content::Memory(bytes) => storage.put(key, bytes).await?,
        Content::File(file) => {
            storage
                .put_stream(key, crate::storage::file_stream(file)?)
                .await?;
        }
    }
    Ok(())
}

/// Makes a stored version current (rollback). Returns the model code.
pub async fn set_current(
    db: &Db,
    effects: Effects<'_>,
    model_id: i64,
    version: &str,
) -> Result<String, StoreError> {
    let code = set_current_locked(db, effects.notifier, model_id, version).await;
    effects.caches.model_firmware_changed(model_id);
    code
}

async fn set_current_locked(
    db: &Db,
    notifier: Notifier,
    model_id: i64,
    version: &str,
) -> Result<String, StoreError> {
    let (mut tx, model) = begin_locked(db, model_id).await?;
    if fw::get(&mut tx, model_id, version).await?.is_none() {
        return Err(version_not_found(&model.code, version));
    }
    fw::set_current(&mut tx, model_id, version).await?;
    if model.firmware_version.as_deref() != Some(version) {
        notifier
            .firmware_changed(&mut tx, model_id, version)
            .await?;
    }
    events::record(
        &mut tx,
        "firmware_current_set",
        &json!({"device_model_id": model_id, "code": model.code, "version": version}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(model_code = %model.code, version, previous = ?model.firmware_version, "firmware_current_set");
    Ok(model.code)
}

/// What a firmware change tells beyond its transaction: the process's lookup caches (after it),
/// and devices (notifications queued in it).
#[derive(Clone, Copy)]
pub struct Effects<'a> {
    pub caches: &'a dyn Invalidation,
    pub notifier: Notifier,
}

/// Deletes a stored version that is not current: the row now, the objects via the outbox.
pub async fn delete_version(
    db: &Db,
    caches: &dyn Invalidation,
    model_id: i64,
    version: &str,
) -> Result<(), StoreError> {
    let deleted = delete_version_locked(db, model_id, version).await;
    caches.model_firmware_changed(model_id);
    deleted
}

async fn delete_version_locked(db: &Db, model_id: i64, version: &str) -> Result<(), StoreError> {
    let (mut tx, model) = begin_locked(db, model_id).await?;
    if model.firmware_version.as_deref() == Some(version) {
        return Err(StoreError::Conflict(format!(
            "Firmware version {version} is the current version of DeviceModel {}; make another version current first",
            model.code
        )));
    }
    if !fw::delete(&mut tx, model_id, version).await? {
        return Err(version_not_found(&model.code, version));
    }
    let spare = fw::encoding_is_a_version(&mut tx, model_id, version).await?;
    match crate::layout::deletable_keys(&model.code, version, spare) {
        Ok(keys) => outbox::schedule_deletion(&mut tx, &keys).await?,
        // A legacy version whose keys cannot even be written: nothing to delete.
        Err(e) => {
            tracing::warn!(model_code = %model.code, version, error = %e, "firmware_delete_unsafe_key")
        }
    }
    events::record(
        &mut tx,
        "firmware_version_deleted",
        &json!({"device_model_id": model_id, "code": model.code, "version": version}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(model_code = %model.code, version, "firmware_version_deleted");
    Ok(())
}

pub fn version_not_found(model_code: &str, version: &str) -> StoreError {
    StoreError::VersionNotFound(format!(
        "FirmwareVersion {version} of DeviceModel {model_code} was not found"
    ))
}
