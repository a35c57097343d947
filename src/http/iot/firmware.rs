//! OTA for devices: `GET /api/iot/firmware` (the current image of the device's model, with
//! ranges) and `GET /api/iot/firmware-version` (the cheap poll).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method};

use crate::db::firmware_versions::CurrentImage;
use crate::http::auth::OtaCaller;
use crate::http::body::HeldBody;
use crate::http::download::{self, Source};
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::http::firmware::{
    current_image, fresh_current_image, image_download, serve_image, DeviceFirmwareVersion,
};
use crate::state::AppState;

/// The current firmware of the calling device's model (OTA): `firmware-{code}.bin`, with `HEAD`,
/// `Range` (ESP-IDF's OTA client resumes with ranges), `If-None-Match` and `If-Range`.
#[utoipa::path(get, path = "/api/iot/firmware", tag = "device api",
    security(("device" = [])),
    responses((status = 200, description = "The image", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 401, body = crate::http::error::ErrorBody),
        (status = 404, description = "The model has no firmware", body = crate::http::error::ErrorBody),
        (status = 416, body = crate::http::error::ErrorBody),
        (status = 503, body = crate::http::error::ErrorBody)))]
pub async fn device_firmware(
    caller: OtaCaller,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Held until the response body is sent: one device (or one leaked credential) cannot hold
    // every connection with slow reads.
    let Some(permit) = state.downloads_by_device.try_acquire(&caller.device.key) else {
        metrics::counter!(crate::telemetry::FIRMWARE_DOWNLOADS_REFUSED, "reason" => "device_busy")
            .increment(1);
        tracing::warn!(device_key = %caller.device.key, "firmware_download_refused_device_busy");
        return Err(ApiError::TooManyRequests {
            message: format!(
                "This device already has {} firmware downloads in progress; retry later",
                state.config.max_downloads_per_device
            ),
            retry_after: 5,
        });
    };
    let response = device_image(caller, &state, &method, &headers).await?;
    Ok(HeldBody::wrap(response, permit))
}

async fn device_image(
    caller: OtaCaller,
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let model_id = caller.device.device_model_id;
    let (image, cached) = image_of(caller, state).await?;
    if !cached {
        return serve_image(state, &image, method, headers).await;
    }
    // A cached answer (at most DEVICE_LOOKUP_CACHE_SECONDS old) is used only when it needs no
    // store read: a 304, or the image in memory, whose bytes are by construction the ones its
    // SHA-256 (the ETag) names. Otherwise the database is asked again before reading the store, so
    // streamed bytes and ETag always belong to the same row.
    let download = image_download(&image)?;
    if let Some(response) = download::not_modified(&download, headers) {
        return Ok(response);
    }
    if let Some(bytes) = image
        .image_sha256
        .as_deref()
        .and_then(|sha256| state.caches.firmware.get_if_present(sha256))
    {
        let source = Source::Memory(bytes);
        return download::respond_from(&state.storage, source, download, method, headers).await;
    }
    let image = fresh_current_image(state, model_id).await?;
    serve_image(state, &image, method, headers).await
}

/// The version the calling device should run (cheap: devices poll it).
#[utoipa::path(get, path = "/api/iot/firmware-version", tag = "device api",
    security(("device" = [])),
    responses((status = 200, body = DeviceFirmwareVersion),
        (status = 401, body = crate::http::error::ErrorBody)))]
pub async fn device_firmware_version(
    caller: OtaCaller,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let (image, _) = image_of(caller, &state).await?;
    Ok((
        [(http::header::CACHE_CONTROL, "no-cache")],
        Json(DeviceFirmwareVersion {
            firmware_version: image.version,
        }),
    )
        .into_response())
}

/// The current image of the caller's model: the one read with its credential in this request, if
/// it was (and is of the model the proved credential names: a credential read twice in one
/// request, see `auth::prove`, keeps the first read's image), else [`current_image`]'s (`true`
/// when that came from the lookup cache).
async fn image_of(caller: OtaCaller, state: &AppState) -> Result<(CurrentImage, bool), ApiError> {
    let model_id = caller.device.device_model_id;
    match caller.image {
        Some(image) if image.model_id == model_id => Ok((image, false)),
        _ => current_image(state, model_id).await,
    }
}
