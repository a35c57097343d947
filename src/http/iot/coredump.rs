//! `POST /api/iot/coredump`: a device uploads a crash dump (SPEC §8). The slots are taken before
//! the body is read: one per device of `MAX_COREDUMP_UPLOADS_PER_DEVICE`, one of
//! `MAX_CONCURRENT_COREDUMP_UPLOADS`; the body is read within `MAX_COREDUMP_BYTES` and
//! `COREDUMP_UPLOAD_TIMEOUT_SECONDS` (`crate::http::body`); storing is `crate::coredumps::ingest`.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::coredumps::ingest::{self, DumpMeta, IngestError, Uploader};
use crate::http::auth::DeviceCaller;
use crate::http::error::ApiError;
use crate::http::extract::{Json, Query};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
pub struct CoredumpUploadQuery {
    /// The chip the dump comes from, e.g. `esp32s3` (at most 50 characters).
    pub chip: Option<String>,
    /// The firmware version the device runs (at most 50 characters, no `/`, `..` or control
    /// characters); the parser uses this version's `firmware.elf`.
    pub firmware_version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CoredumpUploadResponse {
    /// Always `ok`.
    pub status: &'static str,
    pub coredump_id: i64,
}

/// Upload a crash dump (the raw body, at most `MAX_COREDUMP_BYTES`) for parsing.
#[utoipa::path(post, path = "/api/iot/coredump", tag = "device api",
    security(("device" = [])), params(CoredumpUploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The dump as read from flash (raw, base64 UART text or ELF core)"),
    responses((status = 201, body = CoredumpUploadResponse),
        (status = 400, description = "Missing or invalid query parameter, or an empty body", body = crate::http::error::ErrorBody),
        (status = 401, body = crate::http::error::ErrorBody),
        (status = 413, description = "Body larger than MAX_COREDUMP_BYTES", body = crate::http::error::ErrorBody),
        (status = 503, description = "Object store or database unavailable, or MAX_CONCURRENT_COREDUMP_UPLOADS uploads already in progress; nothing was stored", body = crate::http::error::ErrorBody)))]
pub async fn upload(
    device: DeviceCaller,
    State(state): State<AppState>,
    Query(query): Query<CoredumpUploadQuery>,
    headers: http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CoredumpUploadResponse>), ApiError> {
    let meta = DumpMeta::parse(query.chip.as_deref(), query.firmware_version.as_deref())?;
    let too_large = |e| match e {
        crate::http::body::BodyError::TooLarge(limit) => IngestError::TooLarge(limit).into(),
        e => ApiError::from(e),
    };
    // Before the slots: a body declared too large is a 413 however busy the uploads are.
    crate::http::body::refuse_declared_over(&headers, state.config.max_coredump_bytes)
        .map_err(too_large)?;
    // Held until the dump is stored or refused: one device cannot take every upload slot.
    let _device_permit = state
        .coredump_uploads_by_device
        .try_acquire(&device.key)
        .ok_or_else(|| {
            metrics::counter!(crate::telemetry::COREDUMP_UPLOADS_REFUSED, "reason" => "device_busy")
                .increment(1);
            tracing::warn!(device_key = %device.key, "coredump_upload_refused_device_busy");
            ApiError::unavailable(
                "This device already has core dump uploads in progress; retry later",
            )
        })?;
    // Held until the dump is stored or refused: bounds the memory of buffered bodies.
    let _permit = state
        .coredump_uploads
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            metrics::counter!(crate::telemetry::COREDUMP_UPLOADS_REFUSED, "reason" => "busy")
                .increment(1);
            tracing::warn!(device_key = %device.key, "coredump_upload_refused_busy");
            ApiError::unavailable("Too many core dump uploads are in progress; retry later")
        })?;
    let receiving = std::time::Instant::now();
    let content = crate::http::body::read_to_bytes(
        &headers,
        body,
        state.config.max_coredump_bytes,
        state.config.coredump_upload_timeout,
    )
    .await
    .map_err(too_large)?;
    metrics::histogram!(crate::telemetry::COREDUMP_INGEST_STEP_DURATION, "step" => "receive")
        .record(receiving.elapsed().as_secs_f64());
    if content.is_empty() {
        return Err(IngestError::Invalid("No coredump content provided".into()).into());
    }
    // Once the body is in, storing it runs to its end (committed, or its object deleted again)
    // in its own task, holding both upload slots: a device that gives up waiting (ESP-IDF's HTTP
    // client after 5 s) would otherwise cut it off between the PUT and the commit and leave an
    // object no row names, and on SQLite an id that is handed out again.
    let task_state = state.clone();
    let (device_id, device_key, device_model_id) =
        (device.id, device.key.clone(), device.device_model_id);
    let task_meta = meta.clone();
    let id = state
        .detached
        .spawn(async move {
            let (_device_permit, _permit) = (_device_permit, _permit);
            let state = task_state;
            ingest::store(
                &state.db,
                &state.storage,
                &state.dump_handoff,
                state.config.max_coredumps,
                Uploader {
                    device_id,
                    device_key: &device_key,
                    device_model_id,
                },
                &task_meta,
                content,
            )
            .await
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "coredump_upload_task_failed");
            ApiError::Internal("Internal error".into())
        })??;
    // The version a device uploads a dump with is the version it runs (SPEC §15), unless the
    // request says otherwise: a dump saved by a build the bootloader then rolled back is
    // uploaded by the older build, which names itself in `X-Firmware-Version` (already noted).
    if crate::http::auth::reported_version(&headers).is_none() {
        state
            .presence
            .observe(device.id, Some(&meta.firmware_version));
    }
    Ok((
        StatusCode::CREATED,
        Json(CoredumpUploadResponse {
            status: "ok",
            coredump_id: id,
        }),
    ))
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(message) => ApiError::validation(message),
            e @ IngestError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
            e @ IngestError::DeviceGone(_) => ApiError::NotFound(e.to_string()),
            IngestError::Db(e) => e.into(),
            IngestError::Storage(e) => e.into(),
            IngestError::Key(e) => e.into(),
        }
    }
}
