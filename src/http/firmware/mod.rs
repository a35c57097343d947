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

pub mod downloads;
pub mod upload;
pub mod versions;

use axum::routing::{get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::db::firmware_versions::{self as fw, FirmwareVersionRow, ModelFirmware};
use crate::firmware::bundle::BundleError;
use crate::firmware::store::StoreError;
use crate::layout::Artifact;
use crate::state::AppState;

pub(crate) use downloads::{current_image, fresh_current_image, image_download, serve_image};
pub use downloads::{download_artifact, download_current};
pub use upload::{pipeline_upload, upload, MAX_CONCURRENT_UPLOADS};
pub use versions::{list_versions, pipeline_version, remove_version, set_current};
use versions::{remove_version_named_current, remove_version_named_versions};

pub fn router() -> Router<AppState> {
    // Uploads read their bodies against FIRMWARE_UPLOAD_TIMEOUT_SECONDS instead of the server's
    // whole-body deadline.
    let uploads = Router::new()
        .route(
            "/api/device-models/{id}/firmware",
            get(download_current).post(upload),
        )
        .route(
            "/api/pipeline/models/{code}/firmware",
            post(pipeline_upload),
        )
        .route_layer(axum::middleware::from_fn(
            crate::http::body::lift_body_deadline,
        ));
    Router::new()
        .merge(uploads)
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

/// A stored row as the API shows it.
pub(super) fn version_info(row: FirmwareVersionRow, current: Option<&str>) -> FirmwareVersionInfo {
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

pub(super) fn model_not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("DeviceModel {id} was not found"))
}

pub(super) fn model_code_not_found(code: &str) -> ApiError {
    // The code comes from the path: echoed within bounds.
    ApiError::NotFound(format!(
        "DeviceModel {} was not found",
        crate::http::error::bounded(code)
    ))
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
            StoreError::Bundle(BundleError::Invalid(message)) => ApiError::validation(message),
            StoreError::Bundle(BundleError::TooLarge(message)) => {
                ApiError::PayloadTooLarge(message)
            }
            StoreError::Bundle(BundleError::Io(e)) => {
                tracing::error!(error = %e, "firmware_spool_failed");
                ApiError::Internal("Internal error".into())
            }
        }
    }
}

pub(super) async fn model(state: &AppState, id: i64) -> Result<ModelFirmware, ApiError> {
    fw::model_by_id(&state.db, id)
        .await?
        .ok_or_else(|| model_not_found(id))
}
