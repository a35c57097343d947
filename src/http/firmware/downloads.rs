//! Admin downloads of the current image and of any stored artifact, and the image helpers the
//! device OTA routes share (`crate::http::iot::firmware`).

use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, Method};

use super::*;
use crate::db::firmware_versions::{self as fw, CurrentImage};
use crate::firmware::store::{self};
use crate::http::auth::AdminReader;
use crate::http::download::{self, Download, Source};
use crate::http::error::ApiError;
use crate::http::extract::Path;
use crate::layout::{firmware_key, Artifact};
use crate::state::AppState;

// ---------------------------------------------------------------------------------------------
// Downloads

/// A file name safe to put unquoted into `Content-Disposition`.
pub(crate) fn safe_filename(name: &str) -> String {
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
pub(crate) async fn current_image(
    state: &AppState,
    model_id: i64,
) -> Result<(CurrentImage, bool), ApiError> {
    if let Some(image) = state.caches.current_images.get(&model_id) {
        return Ok((image, true));
    }
    Ok((fresh_current_image(state, model_id).await?, false))
}

/// A model's current image read from the database (and remembered for the device API).
pub(crate) async fn fresh_current_image(
    state: &AppState,
    model_id: i64,
) -> Result<CurrentImage, ApiError> {
    state
        .caches
        .current_images
        .load(model_id, || fw::current_image(&state.db, model_id))
        .await?
        .ok_or_else(|| model_not_found(model_id))
}

/// `firmware.bin` of the model's current version, offered as `firmware-{code}.bin`.
pub(crate) fn image_download(image: &CurrentImage) -> Result<Download, ApiError> {
    let version = image
        .version
        .as_deref()
        .ok_or_else(|| ApiError::NotFound(format!("DeviceModel {} has no firmware", image.code)))?;
    Ok(Download {
        key: firmware_key(&image.code, version, Artifact::Bin)?,
        etag: image.image_sha256.clone(),
        content_type: Artifact::Bin.content_type(),
        filename: safe_filename(&format!("firmware-{}.bin", image.code)),
        missing: None,
    })
}

pub(crate) fn stored_size(size: Option<i64>) -> Option<u64> {
    size.and_then(|s| u64::try_from(s).ok())
}

/// Serves the current image, from the firmware cache when it holds it (filling it on a GET that
/// misses), else from the store.
pub(crate) async fn serve_image(
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
        (status = 404, description = "No such model, or it has no firmware", body = crate::http::error::ErrorBody),
        (status = 416, description = "Range not satisfiable", body = crate::http::error::ErrorBody),
        (status = 503, description = "Object store unavailable", body = crate::http::error::ErrorBody)))]
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
        (status = 404, body = crate::http::error::ErrorBody),
        (status = 416, body = crate::http::error::ErrorBody),
        (status = 503, body = crate::http::error::ErrorBody)))]
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
            crate::http::error::bounded(&safe_filename(&artifact)),
            Artifact::file_names()
        )));
    };
    let row = fw::find(&state.db, id, &version)
        .await?
        .ok_or_else(|| {
            store::version_not_found(&model.code, &crate::http::error::bounded(&version))
        })
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
        missing: None,
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
