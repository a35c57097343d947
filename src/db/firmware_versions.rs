//! Queries on `firmware_versions` (and the `device_models.firmware_version` pointer they back).
//!
//! Writes take a [`Tx`]; the read paths devices poll (`/api/iot/firmware-version`, downloads) take
//! the [`Db`] pool directly so they never queue behind SQLite's write lock.

use crate::layout::Artifact;
use chrono::{DateTime, Utc};

use super::{now, Db, DbError, Tx};
use crate::{on_conn, on_pool};

/// Size and SHA-256 (hex) of one stored artifact; `None` for legacy rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFacts {
    pub size: Option<i64>,
    pub sha256: Option<String>,
}

/// A `firmware_versions` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FirmwareVersionRow {
    pub id: i64,
    pub device_model_id: i64,
    pub version: String,
    pub uploaded_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub firmware_bin_size: Option<i64>,
    pub firmware_bin_sha256: Option<String>,
    pub firmware_elf_size: Option<i64>,
    pub firmware_elf_sha256: Option<String>,
    pub firmware_map_size: Option<i64>,
    pub firmware_map_sha256: Option<String>,
    pub sdkconfig_size: Option<i64>,
    pub sdkconfig_sha256: Option<String>,
    pub version_json_size: Option<i64>,
    pub version_json_sha256: Option<String>,
    pub project_name: Option<String>,
    pub idf_version: Option<String>,
    pub build_date: Option<String>,
    pub build_time: Option<String>,
    pub app_elf_sha256: Option<String>,
    pub secure_version: Option<i64>,
    pub chip: Option<String>,
}

impl FirmwareVersionRow {
    /// The recorded size and SHA-256 of one artifact (`None`s for legacy rows).
    pub fn artifact(&self, artifact: Artifact) -> ArtifactFacts {
        let (size, sha256) = match artifact {
            Artifact::Bin => (self.firmware_bin_size, &self.firmware_bin_sha256),
            Artifact::Elf => (self.firmware_elf_size, &self.firmware_elf_sha256),
            Artifact::Map => (self.firmware_map_size, &self.firmware_map_sha256),
            Artifact::Sdkconfig => (self.sdkconfig_size, &self.sdkconfig_sha256),
            Artifact::VersionJson => (self.version_json_size, &self.version_json_sha256),
        };
        ArtifactFacts {
            size,
            sha256: sha256.clone(),
        }
    }
}

/// What an upload writes: the five artifacts in [`Artifact::ALL`] order
/// (size, SHA-256 hex) and the app descriptor facts.
#[derive(Debug, Clone)]
pub struct NewFirmwareVersion<'a> {
    pub version: &'a str,
    pub artifacts: [(i64, &'a str); 5],
    pub project_name: &'a str,
    pub idf_version: &'a str,
    pub build_date: &'a str,
    pub build_time: &'a str,
    pub app_elf_sha256: &'a str,
    pub secure_version: i64,
    pub chip: &'a str,
}

const COLUMNS: &str = "id, device_model_id, version, uploaded_at, created_at,
    firmware_bin_size, firmware_bin_sha256, firmware_elf_size, firmware_elf_sha256,
    firmware_map_size, firmware_map_sha256, sdkconfig_size, sdkconfig_sha256,
    version_json_size, version_json_sha256, project_name, idf_version, build_date, build_time,
    app_elf_sha256, secure_version, chip";

pub const MODEL_VERSION_UNIQUE: (&str, &str) = (
    "uq_firmware_versions_model_version",
    "firmware_versions.device_model_id, firmware_versions.version",
);

/// The model a firmware request is about: its id, code and current version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelFirmware {
    pub id: i64,
    pub code: String,
    pub firmware_version: Option<String>,
}

/// A model's current firmware image as the device API needs it: the model's code, its current
/// version, and that version's `firmware.bin` size and SHA-256 (`None` for legacy rows).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CurrentImage {
    pub model_id: i64,
    pub code: String,
    pub version: Option<String>,
    pub image_size: Option<i64>,
    pub image_sha256: Option<String>,
}

/// The columns of [`CurrentImage`] for the model `m` joined with [`CURRENT_IMAGE_JOIN`] (also
/// read with a device's credential, `db::credentials::find_credential_with_image`).
pub(super) const CURRENT_IMAGE_COLUMNS: &str = "m.id AS model_id, m.code,
    m.firmware_version AS version, f.firmware_bin_size AS image_size,
    f.firmware_bin_sha256 AS image_sha256";
/// The current version's row of the model `m`, if any.
pub(super) const CURRENT_IMAGE_JOIN: &str =
    "LEFT JOIN firmware_versions f ON f.device_model_id = m.id AND f.version = m.firmware_version";

/// The current image of a model, in one query, read from the pool.
pub async fn current_image(db: &Db, model_id: i64) -> Result<Option<CurrentImage>, DbError> {
    let sql = format!(
        "SELECT {CURRENT_IMAGE_COLUMNS} FROM device_models m {CURRENT_IMAGE_JOIN} WHERE m.id = $1"
    );
    Ok(on_pool!(db, |p| sqlx::query_as::<_, CurrentImage>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(model_id)
    .fetch_optional(p)
    .await)?)
}

/// The model by id, read from the pool.
pub async fn model_by_id(db: &Db, id: i64) -> Result<Option<ModelFirmware>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, ModelFirmware>(
        MODEL_BY_ID
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// [`model_by_id`] inside a transaction (a read that must agree with others of the same
/// snapshot: which version is current, and the versions listed).
pub async fn model_in(tx: &mut Tx, id: i64) -> Result<Option<ModelFirmware>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, ModelFirmware>(
        MODEL_BY_ID
    )
    .bind(id)
    .fetch_optional(c)
    .await)?)
}

/// [`model_by_id`] and [`model_in`]: one text, so the two cannot drift apart.
const MODEL_BY_ID: &str = "SELECT id, code, firmware_version FROM device_models WHERE id = $1";

/// The model by code, read from the pool.
pub async fn model_by_code(db: &Db, code: &str) -> Result<Option<ModelFirmware>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, ModelFirmware>(
        "SELECT id, code, firmware_version FROM device_models WHERE code = $1"
    )
    .bind(code)
    .fetch_optional(p)
    .await)?)
}

/// Locks the model row for the rest of the transaction (PostgreSQL `FOR NO KEY UPDATE`; SQLite
/// write transactions are already serialised) and returns it. Every request that changes a
/// model's firmware takes this lock first, so uploads, retention, rollbacks and deletes of one
/// model never interleave. `NO KEY`: rows that refer to the model (a new device, a crash group)
/// take a share lock on it for their foreign key, which `FOR UPDATE` would make wait for the
/// whole firmware change, an upload's body receipt included.
pub async fn lock_model(tx: &mut Tx, id: i64) -> Result<Option<ModelFirmware>, DbError> {
    Ok(match tx {
        Tx::Postgres(t) => {
            sqlx::query_as::<_, ModelFirmware>(LOCK_MODEL)
                .bind(id)
                .fetch_optional(&mut **t)
                .await?
        }
        Tx::Sqlite(t) => {
            sqlx::query_as::<_, ModelFirmware>(
                "SELECT id, code, firmware_version FROM device_models WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut **t)
            .await?
        }
    })
}

/// One stored version of a model, inside a transaction.
pub async fn get(
    tx: &mut Tx,
    model_id: i64,
    version: &str,
) -> Result<Option<FirmwareVersionRow>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM firmware_versions WHERE device_model_id = $1 AND version = $2"
    );
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, FirmwareVersionRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(model_id)
    .bind(version)
    .fetch_optional(c)
    .await)?)
}

/// The model row, locked against other firmware changes (see [`lock_model`]).
const LOCK_MODEL: &str =
    "SELECT id, code, firmware_version FROM device_models WHERE id = $1 FOR NO KEY UPDATE";

/// [`lock_model`] without waiting: `Ok(None)` when another transaction holds the lock (or the
/// model does not exist). PostgreSQL's `FOR NO KEY UPDATE NOWAIT`; on SQLite, where the transaction
/// already holds the database's write lock, the same as [`lock_model`].
pub async fn lock_model_if_free(tx: &mut Tx, id: i64) -> Result<Option<ModelFirmware>, DbError> {
    match tx {
        Tx::Postgres(t) => {
            let sql = format!("{LOCK_MODEL} NOWAIT");
            let locked = sqlx::query_as::<_, ModelFirmware>(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&mut **t)
                .await;
            match locked {
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(None),
                other => Ok(other?),
            }
        }
        Tx::Sqlite(_) => lock_model(tx, id).await,
    }
}

/// What an upload that holds the model's lock needs to know before it learns its version: the
/// model's stored versions, and the keys starting with `key_prefix` (the model's firmware
/// prefix) that are queued for deletion. Both change only under that lock (every firmware change
/// and `reconcile --repair` take it), so they stay true while it is held.
pub async fn versions_and_queued_deletions(
    tx: &mut Tx,
    model_id: i64,
    key_prefix: &str,
) -> Result<(Vec<String>, Vec<String>), DbError> {
    let rows: Vec<(i32, String)> = on_conn!(tx, |c| sqlx::query_as(
        "SELECT 0, version FROM firmware_versions WHERE device_model_id = $1
         UNION ALL
         SELECT 1, object_key FROM object_deletions WHERE substr(object_key, 1, length($2)) = $2"
    )
    .bind(model_id)
    .bind(key_prefix)
    .fetch_all(c)
    .await)?;
    let (versions, queued): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(kind, _)| *kind == 0);
    Ok((
        versions.into_iter().map(|(_, v)| v).collect(),
        queued.into_iter().map(|(_, k)| k).collect(),
    ))
}

/// One stored version of a model, read from the pool.
pub async fn find(
    db: &Db,
    model_id: i64,
    version: &str,
) -> Result<Option<FirmwareVersionRow>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM firmware_versions WHERE device_model_id = $1 AND version = $2"
    );
    Ok(on_pool!(db, |p| sqlx::query_as::<_, FirmwareVersionRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(model_id)
    .bind(version)
    .fetch_optional(p)
    .await)?)
}

/// Every stored version of a model, newest upload first.
pub async fn list(tx: &mut Tx, model_id: i64) -> Result<Vec<FirmwareVersionRow>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM firmware_versions WHERE device_model_id = $1
         ORDER BY uploaded_at DESC, id DESC"
    );
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, FirmwareVersionRow>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(model_id)
    .fetch_all(c)
    .await)?)
}

/// Inserts a version row (uploaded now); a duplicate is a `UniqueViolation` on
/// [`MODEL_VERSION_UNIQUE`]. Returns the new id.
pub async fn insert(
    tx: &mut Tx,
    model_id: i64,
    new: &NewFirmwareVersion<'_>,
) -> Result<i64, DbError> {
    insert_uploaded_at(tx, model_id, new, now()).await
}

/// [`insert`] with a given `uploaded_at` (`migrate-to-s3` keeps the legacy file's time, so
/// retention orders imported builds by when they were built, not by import order).
pub async fn insert_uploaded_at(
    tx: &mut Tx,
    model_id: i64,
    new: &NewFirmwareVersion<'_>,
    uploaded_at: DateTime<Utc>,
) -> Result<i64, DbError> {
    let created_at = now();
    let id = on_conn!(tx, |c| sqlx::query_scalar(
        "INSERT INTO firmware_versions (device_model_id, version, uploaded_at, created_at)
         VALUES ($1, $2, $3, $4) RETURNING id"
    )
    .bind(model_id)
    .bind(new.version)
    .bind(uploaded_at)
    .bind(created_at)
    .fetch_one(c)
    .await)?;
    record_facts(tx, id, new).await?;
    Ok(id)
}

/// Records the artifact and descriptor facts of a row: right after `insert`, or for a row adopted
/// from the Python service (which lacks them) once its artifacts were written again. Leaves
/// `uploaded_at` alone.
pub async fn record_facts(
    tx: &mut Tx,
    id: i64,
    new: &NewFirmwareVersion<'_>,
) -> Result<(), DbError> {
    crate::execute!(
        tx,
        sqlx::query(
            "UPDATE firmware_versions SET
            firmware_bin_size = $1, firmware_bin_sha256 = $2, firmware_elf_size = $3,
            firmware_elf_sha256 = $4, firmware_map_size = $5, firmware_map_sha256 = $6,
            sdkconfig_size = $7, sdkconfig_sha256 = $8, version_json_size = $9,
            version_json_sha256 = $10, project_name = $11, idf_version = $12, build_date = $13,
            build_time = $14, app_elf_sha256 = $15, secure_version = $16, chip = $17
         WHERE id = $18"
        )
        .bind(new.artifacts[0].0)
        .bind(new.artifacts[0].1)
        .bind(new.artifacts[1].0)
        .bind(new.artifacts[1].1)
        .bind(new.artifacts[2].0)
        .bind(new.artifacts[2].1)
        .bind(new.artifacts[3].0)
        .bind(new.artifacts[3].1)
        .bind(new.artifacts[4].0)
        .bind(new.artifacts[4].1)
        .bind(new.project_name)
        .bind(new.idf_version)
        .bind(new.build_date)
        .bind(new.build_time)
        .bind(new.app_elf_sha256)
        .bind(new.secure_version)
        .bind(new.chip)
        .bind(id)
    )?;
    Ok(())
}

/// Marks a stored version as uploaded again now (an identical re-upload).
pub async fn touch(tx: &mut Tx, id: i64) -> Result<(), DbError> {
    let now = now();
    crate::execute!(
        tx,
        sqlx::query("UPDATE firmware_versions SET uploaded_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
    )?;
    Ok(())
}

/// Points `device_models.firmware_version` at `version` (which must be stored).
pub async fn set_current(tx: &mut Tx, model_id: i64, version: &str) -> Result<(), DbError> {
    let now = now();
    crate::execute!(
        tx,
        sqlx::query(
            "UPDATE device_models SET firmware_version = $1, updated_at = $2 WHERE id = $3"
        )
        .bind(version)
        .bind(now)
        .bind(model_id)
    )?;
    Ok(())
}

/// Deletes one version row; true when it existed.
pub async fn delete(tx: &mut Tx, model_id: i64, version: &str) -> Result<bool, DbError> {
    let rows = crate::execute!(
        tx,
        sqlx::query("DELETE FROM firmware_versions WHERE device_model_id = $1 AND version = $2")
            .bind(model_id)
            .bind(version)
    )?;
    Ok(rows == 1)
}

/// Deletes these versions of the model (on PostgreSQL in one statement, on SQLite in one per
/// [`crate::db::BIND_CHUNK`] versions); how many rows went.
pub async fn delete_many(tx: &mut Tx, model_id: i64, versions: &[String]) -> Result<u64, DbError> {
    if versions.is_empty() {
        return Ok(0);
    }
    let t = match tx {
        Tx::Postgres(t) => {
            let rows = sqlx::query(
                "DELETE FROM firmware_versions WHERE device_model_id = $1 AND version = ANY($2)",
            )
            .bind(model_id)
            .bind(versions)
            .execute(&mut **t)
            .await?;
            return Ok(rows.rows_affected());
        }
        Tx::Sqlite(t) => t,
    };
    let mut deleted = 0;
    for chunk in versions.chunks(crate::db::BIND_CHUNK) {
        // `$1` is the model; the versions are `$2` onwards.
        let sql = format!(
            "DELETE FROM firmware_versions WHERE device_model_id = $1 AND version IN ({})",
            crate::db::placeholder_list(2, chunk.len(), |p| p)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(model_id);
        for version in chunk {
            query = query.bind(version.as_str());
        }
        deleted += query.execute(&mut **t).await?.rows_affected();
    }
    Ok(deleted)
}

/// A model's versions, newest upload first (what retention ranks).
pub async fn versions_newest_first(tx: &mut Tx, model_id: i64) -> Result<Vec<String>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT version FROM firmware_versions WHERE device_model_id = $1
         ORDER BY uploaded_at DESC, id DESC"
    )
    .bind(model_id)
    .fetch_all(c)
    .await)?)
}

/// The advisory-lock class of a firmware version's lock (PostgreSQL's two-key advisory locks:
/// class, id). The id is `hashtext(model id || '/' || version)`: two versions that share one wait
/// for each other, never less safety.
pub const VERSION_LOCK_CLASS: i32 = 0x4657; // "FW"

/// PostgreSQL: takes the version lock of each of `versions` of the model exclusively, waiting for
/// the core-dump uploads and reparses in flight that reported one of them (they take it shared,
/// see `coredumps::lock_device_and_insert`): read after this, [`pending_coredump_versions`] sees
/// their dumps. An advisory lock rather than the version's row: a fleet uploading dumps of one
/// version would otherwise share-lock one hot row, each dump a new MultiXact. SQLite needs
/// nothing: its one writer at a time is the firmware upload.
pub async fn lock_for_deletion(
    tx: &mut Tx,
    model_id: i64,
    versions: &[String],
) -> Result<(), DbError> {
    if let Tx::Postgres(t) = tx {
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1, hashtext($2::bigint::text || '/' || v))
             FROM (SELECT v FROM unnest($3::text[]) AS v ORDER BY v) AS candidates",
        )
        .bind(VERSION_LOCK_CLASS)
        .bind(model_id)
        .bind(versions)
        .fetch_all(&mut **t)
        .await?;
    }
    Ok(())
}

/// The firmware versions that `PENDING` core dumps of devices of this model report: their ELFs
/// are still needed to parse those dumps.
pub async fn pending_coredump_versions(tx: &mut Tx, model_id: i64) -> Result<Vec<String>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_scalar(
        "SELECT DISTINCT c.firmware_version FROM coredumps c
         JOIN devices d ON d.id = c.device_id
         WHERE d.device_model_id = $1 AND c.parse_status = 'PENDING'"
    )
    .bind(model_id)
    .fetch_all(c)
    .await)?)
}

/// Whether the model also has a version spelt like `version`'s legacy percent-encoding (the
/// Python service stored `2.1%7Erc1` under its own name): then the encoded keys are that
/// version's, not copies of `version`'s (see `crate::layout::deletable_keys`).
pub async fn encoding_is_a_version(
    tx: &mut Tx,
    model_id: i64,
    version: &str,
) -> Result<bool, DbError> {
    match crate::layout::legacy_encoded_version(version) {
        Some(encoded) => Ok(get(tx, model_id, &encoded).await?.is_some()),
        None => Ok(false),
    }
}
