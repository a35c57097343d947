//! Firmware over HTTP (SPEC §5, §7): bundle uploads (admin and CI pipeline), the stored versions
//! of a model, rollback and delete, and downloads for admins and devices (OTA).
//!
//! Uploads stream the request body (raw ZIP, or the multipart part `file`) into an anonymous
//! temporary file, counting bytes: past `MAX_FIRMWARE_BYTES` the request is answered 413 without
//! reading further (a `Content-Length` over the limit is refused before reading anything). At most
//! [`MAX_CONCURRENT_UPLOADS`] uploads are received at once per process; more wait. Validation
//! (`crate::firmware::bundle`) runs on a blocking thread, storing follows golden rule 1
//! (`crate::firmware::store`).
//!
//! Downloads go through [`super::download::respond_from`]: streamed, `HEAD`, single ranges fetched
//! as ranged GETs from the store, the artifact's SHA-256 as `ETag`. `firmware.bin` is served from
//! the in-memory firmware cache when it holds it (`crate::firmware::cache`). The device routes
//! reuse the model's current image for up to `DEVICE_LOOKUP_CACHE_SECONDS`
//! (`crate::lookup_cache`), but only when no store read is needed; admin routes always ask the
//! database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use utoipa::ToSchema;

use super::auth::{AdminEditor, AdminReader, DeviceCaller, PipelineCaller};
use super::body::{BodyError, LimitedBody};
use super::download::{self, Download, Source};
use super::error::{ApiError, Json};
use crate::db::firmware_versions::{self as fw, CurrentImage, FirmwareVersionRow, ModelFirmware};
use crate::firmware::bundle::{self, BundleError};
use crate::firmware::store::{self, StoreError};
use crate::layout::{firmware_key, Artifact};
use crate::state::AppState;

/// Firmware uploads received at once by one process; further uploads wait for a slot, at most
/// [`UPLOAD_SLOT_WAIT`], then get 503.
pub const MAX_CONCURRENT_UPLOADS: usize = 4;
const UPLOAD_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

static UPLOAD_SLOTS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_UPLOADS);

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/device-models/{id}/firmware",
            get(download_current).post(upload),
        )
        .route(
            "/api/device-models/{id}/firmware/versions",
            get(list_versions).delete(remove_version_named_versions),
        )
        .route(
            "/api/device-models/{id}/firmware/current",
            put(set_current).delete(remove_version_named_current),
        )
        .route(
            "/api/device-models/{id}/firmware/{version}",
            axum::routing::delete(remove_version),
        )
        .route(
            "/api/device-models/{id}/firmware/{version}/{artifact}",
            get(download_artifact),
        )
        .route(
            "/api/pipeline/models/{code}/firmware",
            post(pipeline_upload),
        )
        .route(
            "/api/pipeline/models/{code}/firmware-version",
            get(pipeline_version),
        )
}

/// The model after an upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FirmwareUploadResponse {
    /// The device model's id.
    pub id: i64,
    pub code: String,
    /// The version now served to devices (the uploaded one).
    pub firmware_version: String,
}

/// A firmware bundle: a ZIP with exactly `{code}.bin`, `{code}.elf`, `{code}.map`, `sdkconfig`
/// and `version.json` at its root.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct FirmwareZip(pub Vec<u8>);

/// The multipart form of an upload: the bundle in the part `file`.
#[derive(Debug, ToSchema)]
pub struct FirmwareUploadForm {
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// One artifact of a stored version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FirmwareArtifactInfo {
    /// `firmware.bin`, `firmware.elf`, `firmware.map`, `sdkconfig` or `version.json`.
    pub name: String,
    /// Size in bytes (null for versions adopted from the Python service).
    pub size: Option<i64>,
    /// SHA-256, lower-case hex; also the download's ETag (null for adopted versions).
    pub sha256: Option<String>,
}

/// One stored firmware version with what its app descriptor says.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FirmwareVersionInfo {
    pub version: String,
    /// Whether devices are served this version.
    pub is_current: bool,
    pub uploaded_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Target chip from the image header, e.g. `esp32c3`.
    pub chip: Option<String>,
    pub project_name: Option<String>,
    pub idf_version: Option<String>,
    /// Compile date (`Mmm dd yyyy`); empty when the build disabled it.
    pub build_date: Option<String>,
    /// Compile time (`HH:MM:SS`); empty when the build disabled it.
    pub build_time: Option<String>,
    /// The ELF SHA-256 embedded in the image (equals the `firmware.elf` artifact's SHA-256).
    pub app_elf_sha256: Option<String>,
    /// Anti-rollback counter.
    pub secure_version: Option<i64>,
    pub artifacts: Vec<FirmwareArtifactInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FirmwareVersionList {
    pub device_model_id: i64,
    pub code: String,
    pub current_version: Option<String>,
    /// Newest upload first.
    pub versions: Vec<FirmwareVersionInfo>,
    pub count: usize,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SetCurrentFirmware {
    /// A stored version of this model.
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineFirmwareVersion {
    pub code: String,
    pub firmware_version: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceFirmwareVersion {
    /// The version the device should run, or null when its model has no firmware.
    pub firmware_version: Option<String>,
}

fn model_not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("DeviceModel {id} was not found"))
}

fn model_code_not_found(code: &str) -> ApiError {
    ApiError::NotFound(format!("DeviceModel {code} was not found"))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ModelNotFound(id) => model_not_found(id),
            StoreError::VersionNotFound(message) => ApiError::NotFound(message),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Db(e) => e.into(),
            StoreError::Storage(e) => e.into(),
            StoreError::Key(e) => e.into(),
            StoreError::Io(e) => {
                tracing::error!(error = %e, "firmware_spool_failed");
                ApiError::Internal("Internal error".into())
            }
        }
    }
}

async fn model(state: &AppState, id: i64) -> Result<ModelFirmware, ApiError> {
    fw::model_by_id(&state.db, id)
        .await?
        .ok_or_else(|| model_not_found(id))
}

// ---------------------------------------------------------------------------------------------
// Uploads

/// Upload a firmware bundle for a model: validated (SPEC §7), stored as five objects under
/// `firmware/{code}/{version}/`, made current; older versions beyond `MAX_FIRMWARES` are pruned.
/// Re-uploading a stored version with identical content makes it current again; different content
/// under a stored version is 409. Requires `editor`.
#[utoipa::path(post, path = "/api/device-models/{id}/firmware", tag = "firmware",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device model id")),
    request_body(description = "The bundle as the raw body (`application/zip` or `application/octet-stream`) or as the multipart part `file`",
        content((FirmwareZip = "application/zip"), (FirmwareUploadForm = "multipart/form-data"))),
    responses((status = 200, body = FirmwareUploadResponse),
        (status = 400, description = "The bundle failed a check (message says which)", body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "This version is stored with different content", body = super::error::ErrorBody),
        (status = 413, description = "Body or an entry over MAX_FIRMWARE_BYTES", body = super::error::ErrorBody),
        (status = 503, description = "Object store or database unavailable", body = super::error::ErrorBody)))]
pub async fn upload(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FirmwareUploadResponse>, ApiError> {
    let model = model(&state, id).await?;
    receive_and_store(&state, model, &headers, body).await
}

/// The CI pipeline's upload route: as `POST /api/device-models/{id}/firmware`, with the model
/// found by code. Requires the `pipeline` role.
#[utoipa::path(post, path = "/api/pipeline/models/{code}/firmware", tag = "pipeline",
    security(("admin" = ["pipeline"])),
    params(("code" = String, Path, description = "Device model code")),
    request_body(description = "The bundle as the raw body or as the multipart part `file`",
        content((FirmwareZip = "application/zip"), (FirmwareUploadForm = "multipart/form-data"))),
    responses((status = 200, body = FirmwareUploadResponse),
        (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody),
        (status = 503, body = super::error::ErrorBody)))]
pub async fn pipeline_upload(
    _: PipelineCaller,
    State(state): State<AppState>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FirmwareUploadResponse>, ApiError> {
    let model = fw::model_by_code(&state.db, &code)
        .await?
        .ok_or_else(|| model_code_not_found(&code))?;
    receive_and_store(&state, model, &headers, body).await
}

async fn receive_and_store(
    state: &AppState,
    model: ModelFirmware,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<FirmwareUploadResponse>, ApiError> {
    let limit = state.config.max_firmware_bytes;
    let busy = || ApiError::unavailable("Too many firmware uploads are in progress; retry later");
    let _slot = tokio::time::timeout(UPLOAD_SLOT_WAIT, UPLOAD_SLOTS.acquire())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    let spool = receive_body(headers, body, limit, state.config.firmware_upload_timeout).await?;
    let code = model.code.clone();
    let bundle = tokio::task::spawn_blocking(move || bundle::validate(spool, &code, limit))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "firmware_validation_panicked");
            ApiError::Internal("Internal error".into())
        })?
        .map_err(|e| match e {
            BundleError::Invalid(message) => ApiError::validation(message),
            BundleError::TooLarge(message) => ApiError::PayloadTooLarge(message),
            BundleError::Io(e) => {
                tracing::error!(error = %e, "firmware_spool_failed");
                ApiError::Internal("Internal error".into())
            }
        })?;
    let stored = store::store_bundle(
        &state.db,
        &state.storage,
        model.id,
        bundle,
        state.config.max_firmwares,
    )
    .await;
    // Also after a failure: the commit may have happened.
    state.caches.model_firmware_changed(model.id);
    let stored = stored?;
    Ok(Json(FirmwareUploadResponse {
        id: stored.model_id,
        code: stored.model_code,
        firmware_version: stored.version,
    }))
}

/// How far the multipart parser may read ahead of the part data it has handed out (boundaries,
/// part headers, a preamble). A body without a findable boundary would otherwise be buffered
/// whole by the parser while it searches.
const MAX_MULTIPART_LOOKAHEAD: u64 = 1024 * 1024;

/// Streams the body (or its multipart part `file`) into an anonymous temporary file, stopping with
/// 413 as soon as more than `limit` bytes have arrived, and with 408 past `deadline`.
async fn receive_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    deadline: std::time::Duration,
) -> Result<std::fs::File, ApiError> {
    let stream = LimitedBody::new(headers, body, limit, deadline)?;
    let failure = stream.failure_handle();
    let spool_failed = |e: std::io::Error| {
        tracing::error!(error = %e, "firmware_spool_failed");
        ApiError::Internal("Internal error".into())
    };
    let mut spool = tokio::fs::File::from_std(tempfile::tempfile().map_err(spool_failed)?);
    // A body failure surfaces wrapped in the parser's error: report the body's own reason.
    let read_failed = |what: &str, e: &dyn std::fmt::Display| match failure.get() {
        Some(cause) => ApiError::from(cause),
        None => ApiError::validation(format!("{what}: {e}")),
    };

    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| ApiError::validation(format!("Invalid multipart body: {e}")))?;
        let pulled = Arc::new(AtomicU64::new(0));
        let handed_out = Arc::new(AtomicU64::new(0));
        let (p, h) = (pulled.clone(), handed_out.clone());
        let stream = stream.map(move |chunk| {
            let chunk = chunk?;
            let total = p.fetch_add(chunk.len() as u64, Ordering::AcqRel) + chunk.len() as u64;
            if total.saturating_sub(h.load(Ordering::Acquire)) > MAX_MULTIPART_LOOKAHEAD {
                return Err(BodyError::Read(
                    "no multipart part boundary found where one was expected".into(),
                ));
            }
            Ok(chunk)
        });
        let mut multipart = multer::Multipart::new(stream, boundary);
        let mut found = false;
        while let Some(mut field) = multipart
            .next_field()
            .await
            .map_err(|e| read_failed("Invalid multipart body", &e))?
        {
            let is_file = field.name() == Some("file") && !found;
            found |= is_file;
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| read_failed("Invalid multipart body", &e))?
            {
                handed_out.fetch_add(chunk.len() as u64, Ordering::AcqRel);
                if is_file {
                    spool.write_all(&chunk).await.map_err(spool_failed)?;
                }
            }
        }
    } else {
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            spool.write_all(&chunk?).await.map_err(spool_failed)?;
        }
    }
    spool.flush().await.map_err(spool_failed)?;
    Ok(spool.into_std().await)
}

// ---------------------------------------------------------------------------------------------
// Versions

fn version_info(row: FirmwareVersionRow, current: Option<&str>) -> FirmwareVersionInfo {
    let artifacts = Artifact::ALL
        .into_iter()
        .map(|artifact| {
            let facts = row.artifact(artifact);
            FirmwareArtifactInfo {
                name: artifact.file_name().to_string(),
                size: facts.size,
                sha256: facts.sha256,
            }
        })
        .collect();
    FirmwareVersionInfo {
        is_current: current == Some(row.version.as_str()),
        version: row.version,
        uploaded_at: row.uploaded_at,
        created_at: row.created_at,
        chip: row.chip,
        project_name: row.project_name,
        idf_version: row.idf_version,
        build_date: row.build_date,
        build_time: row.build_time,
        app_elf_sha256: row.app_elf_sha256,
        secure_version: row.secure_version,
        artifacts,
    }
}

/// The stored firmware versions of a model, newest upload first, with artifact sizes and
/// SHA-256s, app descriptor facts, and which one is current.
#[utoipa::path(get, path = "/api/device-models/{id}/firmware/versions", tag = "firmware",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device model id")),
    responses((status = 200, body = FirmwareVersionList),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn list_versions(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<FirmwareVersionList>, ApiError> {
    let model = model(&state, id).await?;
    let rows = fw::list(&state.db, id).await?;
    let current = model.firmware_version.as_deref();
    let versions: Vec<_> = rows
        .into_iter()
        .map(|row| version_info(row, current))
        .collect();
    Ok(Json(FirmwareVersionList {
        device_model_id: model.id,
        code: model.code.clone(),
        current_version: model.firmware_version.clone(),
        count: versions.len(),
        versions,
    }))
}

/// Make a stored version current (rollback or roll forward). Requires `editor`.
#[utoipa::path(put, path = "/api/device-models/{id}/firmware/current", tag = "firmware",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device model id")),
    request_body = SetCurrentFirmware,
    responses((status = 200, body = FirmwareUploadResponse),
        (status = 400, body = super::error::ErrorBody),
        (status = 404, description = "No such model or version", body = super::error::ErrorBody)))]
pub async fn set_current(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<SetCurrentFirmware>,
) -> Result<Json<FirmwareUploadResponse>, ApiError> {
    let code = store::set_current(&state.db, id, &body.version).await;
    state.caches.model_firmware_changed(id);
    let code = code?;
    Ok(Json(FirmwareUploadResponse {
        id,
        code,
        firmware_version: body.version,
    }))
}

/// Delete a stored version that is not current: the row now, its five objects soon (outbox).
/// Requires `editor`.
#[utoipa::path(delete, path = "/api/device-models/{id}/firmware/{version}", tag = "firmware",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device model id"),
        ("version" = String, Path, description = "A stored version")),
    responses((status = 204, description = "Deleted"),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "The version is current", body = super::error::ErrorBody)))]
pub async fn remove_version(
    _: AdminEditor,
    State(state): State<AppState>,
    Path((id, version)): Path<(i64, String)>,
) -> Result<http::StatusCode, ApiError> {
    let deleted = store::delete_version(&state.db, id, &version).await;
    state.caches.model_firmware_changed(id);
    deleted?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// `DELETE …/firmware/versions` and `…/firmware/current` name versions called so (their paths are
/// taken by the list and the rollback routes).
async fn remove_version_named_versions(
    editor: AdminEditor,
    state: State<AppState>,
    Path(id): Path<i64>,
) -> Result<http::StatusCode, ApiError> {
    remove_version(editor, state, Path((id, "versions".to_string()))).await
}

async fn remove_version_named_current(
    editor: AdminEditor,
    state: State<AppState>,
    Path(id): Path<i64>,
) -> Result<http::StatusCode, ApiError> {
    remove_version(editor, state, Path((id, "current".to_string()))).await
}

/// The current version of a model, for CI. Requires the `pipeline` role.
#[utoipa::path(get, path = "/api/pipeline/models/{code}/firmware-version", tag = "pipeline",
    security(("admin" = ["pipeline"])),
    params(("code" = String, Path, description = "Device model code")),
    responses((status = 200, body = PipelineFirmwareVersion),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn pipeline_version(
    _: PipelineCaller,
    State(state): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<PipelineFirmwareVersion>, ApiError> {
    let model = fw::model_by_code(&state.db, &code)
        .await?
        .ok_or_else(|| model_code_not_found(&code))?;
    Ok(Json(PipelineFirmwareVersion {
        code: model.code,
        firmware_version: model.firmware_version,
    }))
}

// ---------------------------------------------------------------------------------------------
// Downloads

/// A file name safe to put unquoted into `Content-Disposition`.
fn safe_filename(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A model's current image, from the short-lived lookup cache when possible (see
/// `crate::lookup_cache`); `true` when the answer came from the cache.
async fn current_image(state: &AppState, model_id: i64) -> Result<(CurrentImage, bool), ApiError> {
    if let Some(image) = state.caches.current_images.get(&model_id) {
        return Ok((image, true));
    }
    Ok((fresh_current_image(state, model_id).await?, false))
}

/// A model's current image read from the database (and remembered for the device API).
async fn fresh_current_image(state: &AppState, model_id: i64) -> Result<CurrentImage, ApiError> {
    state
        .caches
        .current_images
        .load(model_id, || fw::current_image(&state.db, model_id))
        .await?
        .ok_or_else(|| model_not_found(model_id))
}

/// `firmware.bin` of the model's current version, offered as `firmware-{code}.bin`.
fn image_download(image: &CurrentImage) -> Result<Download, ApiError> {
    let version = image
        .version
        .as_deref()
        .ok_or_else(|| ApiError::NotFound(format!("DeviceModel {} has no firmware", image.code)))?;
    Ok(Download {
        key: firmware_key(&image.code, version, Artifact::Bin)?,
        etag: image.image_sha256.clone(),
        content_type: Artifact::Bin.content_type(),
        filename: safe_filename(&format!("firmware-{}.bin", image.code)),
    })
}

fn stored_size(size: Option<i64>) -> Option<u64> {
    size.and_then(|s| u64::try_from(s).ok())
}

/// Serves the current image, from the firmware cache when it holds it (filling it on a GET that
/// misses), else from the store.
async fn serve_image(
    state: &AppState,
    image: &CurrentImage,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let download = image_download(image)?;
    let source = Source::Cache {
        cache: &state.caches.firmware,
        sha256: image.image_sha256.as_deref(),
        size: stored_size(image.image_size),
    };
    download::respond_from(&state.storage, source, download, method, headers).await
}

/// Download the model's current `firmware.bin` (`GET` or `HEAD`; `Range`, `If-None-Match` and
/// `If-Range` supported; the ETag is its SHA-256).
#[utoipa::path(get, path = "/api/device-models/{id}/firmware", tag = "firmware",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device model id")),
    responses((status = 200, description = "The image", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "No such model, or it has no firmware", body = super::error::ErrorBody),
        (status = 416, description = "Range not satisfiable", body = super::error::ErrorBody),
        (status = 503, description = "Object store unavailable", body = super::error::ErrorBody)))]
pub async fn download_current(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let image = fresh_current_image(&state, id).await?;
    serve_image(&state, &image, &method, &headers).await
}

/// Download one artifact of a stored version: `firmware.bin`, `firmware.elf`, `firmware.map`,
/// `sdkconfig` or `version.json` (`HEAD`, `Range`, ETag as for the current firmware).
#[utoipa::path(get, path = "/api/device-models/{id}/firmware/{version}/{artifact}", tag = "firmware",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device model id"),
        ("version" = String, Path, description = "A stored version"),
        ("artifact" = String, Path, description = "firmware.bin, firmware.elf, firmware.map, sdkconfig or version.json")),
    responses((status = 200, description = "The artifact"),
        (status = 206, description = "The requested range"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, body = super::error::ErrorBody),
        (status = 416, body = super::error::ErrorBody),
        (status = 503, body = super::error::ErrorBody)))]
pub async fn download_artifact(
    _: AdminReader,
    State(state): State<AppState>,
    Path((id, version, artifact)): Path<(i64, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let model = model(&state, id).await?;
    let Some(artifact) = Artifact::from_file_name(&artifact) else {
        return Err(ApiError::NotFound(format!(
            "Firmware artifact {} does not exist; artifacts are {}",
            safe_filename(&artifact),
            Artifact::file_names()
        )));
    };
    let row = fw::find(&state.db, id, &version)
        .await?
        .ok_or_else(|| store::version_not_found(&model.code, &version))
        .map_err(ApiError::from)?;
    let facts = row.artifact(artifact);
    let download = Download {
        key: firmware_key(&model.code, &version, artifact)?,
        etag: facts.sha256.clone(),
        content_type: artifact.content_type(),
        filename: safe_filename(&format!(
            "{}-{}-{}",
            model.code,
            version,
            artifact.file_name()
        )),
    };
    // Only the image devices fetch is cached: an ELF or map of tens of MiB, read now and then by
    // a person or the parser, would push the images out.
    let source = match artifact {
        Artifact::Bin => Source::Cache {
            cache: &state.caches.firmware,
            sha256: facts.sha256.as_deref(),
            size: stored_size(facts.size),
        },
        _ => Source::Store,
    };
    download::respond_from(&state.storage, source, download, &method, &headers).await
}

/// The current firmware of the calling device's model (OTA): `firmware-{code}.bin`, with `HEAD`,
/// `Range` (ESP-IDF's OTA client resumes with ranges), `If-None-Match` and `If-Range`.
#[utoipa::path(get, path = "/api/iot/firmware", tag = "device api",
    security(("device" = [])),
    responses((status = 200, description = "The image", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 401, body = super::error::ErrorBody),
        (status = 404, description = "The model has no firmware", body = super::error::ErrorBody),
        (status = 416, body = super::error::ErrorBody),
        (status = 503, body = super::error::ErrorBody)))]
pub async fn device_firmware(
    device: DeviceCaller,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let model_id = device.device_model_id;
    let (image, cached) = current_image(&state, model_id).await?;
    if !cached {
        return serve_image(&state, &image, &method, &headers).await;
    }
    // A cached answer (at most DEVICE_LOOKUP_CACHE_SECONDS old) is used only when it needs no
    // store read: a 304, or the image in memory, whose bytes are by construction the ones its
    // SHA-256 (the ETag) names. Otherwise the database is asked again before reading the store, so
    // streamed bytes and ETag always belong to the same row.
    let download = image_download(&image)?;
    if let Some(response) = download::not_modified(&download, &headers) {
        return Ok(response);
    }
    if let Some(bytes) = image
        .image_sha256
        .as_deref()
        .and_then(|sha256| state.caches.firmware.get_if_present(sha256))
    {
        let source = Source::Memory(bytes);
        return download::respond_from(&state.storage, source, download, &method, &headers).await;
    }
    let image = fresh_current_image(&state, model_id).await?;
    serve_image(&state, &image, &method, &headers).await
}

/// The version the calling device should run (cheap: devices poll it).
#[utoipa::path(get, path = "/api/iot/firmware-version", tag = "device api",
    security(("device" = [])),
    responses((status = 200, body = DeviceFirmwareVersion),
        (status = 401, body = super::error::ErrorBody)))]
pub async fn device_firmware_version(
    device: DeviceCaller,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let (image, _) = current_image(&state, device.device_model_id).await?;
    Ok((
        [(http::header::CACHE_CONTROL, "no-cache")],
        Json(DeviceFirmwareVersion {
            firmware_version: image.version,
        }),
    )
        .into_response())
}
