//! Firmware bundle uploads: the admin route and the CI pipeline route.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::HeaderMap;
use std::io::Write;
use tokio::sync::Semaphore;

use super::*;
use crate::db::firmware_versions::{self as fw, ModelFirmware};
use crate::firmware::bundle::Spool;
use crate::firmware::early::EarlyImage;
use crate::firmware::upload::{self, UploadLimits, SPOOL_IN_MEMORY};
use crate::http::auth::{AdminEditor, PipelineCaller};
use crate::http::body::{BodyError, LimitedBody};
use crate::http::error::ApiError;
use crate::http::extract::{Json, Path};
use crate::state::AppState;

/// Firmware uploads received at once by one process; further uploads wait for a slot, at most
/// [`UPLOAD_SLOT_WAIT`], then get 503.
pub const MAX_CONCURRENT_UPLOADS: usize = 4;
const UPLOAD_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

static UPLOAD_SLOTS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_UPLOADS);

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
        (status = 400, description = "The bundle failed a check (message says which)", body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, description = "This version is stored with different content", body = crate::http::error::ErrorBody),
        (status = 413, description = "Body or an entry over MAX_FIRMWARE_BYTES", body = crate::http::error::ErrorBody),
        (status = 503, description = "Object store or database unavailable", body = crate::http::error::ErrorBody)))]
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
        (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody),
        (status = 413, body = crate::http::error::ErrorBody),
        (status = 503, body = crate::http::error::ErrorBody)))]
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
    // Before the slot: a body declared too large is a 413 however busy the uploads are.
    crate::http::body::refuse_declared_over(headers, limit)?;
    let slot = tokio::time::timeout(UPLOAD_SLOT_WAIT, UPLOAD_SLOTS.acquire())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    let started = std::time::Instant::now();
    let early = if state.config.firmware_stream_image_put {
        EarlyImage::start(&state.db, &state.storage, model.id, &model.code, limit)
    } else {
        None
    };
    let (spool, early) = receive_body(
        headers,
        body,
        limit,
        state.config.firmware_upload_timeout,
        early,
    )
    .await?;
    metrics::histogram!(crate::telemetry::FIRMWARE_UPLOAD_STEP_DURATION, "step" => "receive")
        .record(started.elapsed().as_secs_f64());
    let limits = UploadLimits {
        max_entry_bytes: limit,
        keep: state.config.max_firmwares,
    };
    // Once the body is in, storing it runs to its end (stored, or cleaned up) in its own task,
    // holding the upload slot: a client that disconnects now cannot cut it off half-way (PUTs
    // detached from the transaction that owns their keys).
    let task_state = state.clone();
    let stored = state
        .detached
        .spawn(async move {
            let _slot = slot;
            let state = task_state;
            upload::upload_bundle(
                &state.db,
                &state.storage,
                state.effects(),
                model.id,
                &model.code,
                upload::Received { spool, early },
                limits,
            )
            .await
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "firmware_upload_task_failed");
            ApiError::Internal("Internal error".into())
        })??;
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

/// Receives the body (or its multipart part `file`) into a [`Spool`]: memory up to
/// [`SPOOL_IN_MEMORY`], then an anonymous temporary file, and hands each chunk to `early` as it
/// arrives. Stops with 413 as soon as more than `limit` bytes have arrived, and with 408 past
/// `deadline`.
async fn receive_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    deadline: std::time::Duration,
    early: Option<EarlyImage>,
) -> Result<(Spool, Option<EarlyImage>), ApiError> {
    let stream = LimitedBody::new(headers, body, limit, deadline)?;
    let failure = stream.failure_handle();
    let spool_failed = |e: std::io::Error| {
        tracing::error!(error = %e, "firmware_spool_failed");
        ApiError::Internal("Internal error".into())
    };
    let declared = crate::http::body::declared_length(headers).unwrap_or(0);
    let mut spool = SpoolWriter::new(declared.min(SPOOL_IN_MEMORY), early);
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
                    spool.write(chunk).await.map_err(spool_failed)?;
                }
            }
        }
    } else {
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            spool.write(chunk?).await.map_err(spool_failed)?;
        }
    }
    spool.finish().await.map_err(spool_failed)
}

/// Collects a body in memory until it passes [`SPOOL_IN_MEMORY`], then moves it to a temporary
/// file, written in batches of [`FILE_BATCH`] on the blocking pool (one blocking hop per batch
/// instead of one per network chunk).
struct SpoolWriter {
    memory: BytesMut,
    file: Option<std::fs::File>,
    /// Sees every chunk as it arrives (`crate::firmware::early`).
    early: Option<EarlyImage>,
}

const FILE_BATCH: usize = 1024 * 1024;

impl SpoolWriter {
    fn new(capacity: u64, early: Option<EarlyImage>) -> Self {
        SpoolWriter {
            memory: BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0)),
            file: None,
            early,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        if let Some(early) = &mut self.early {
            early.feed(&chunk);
        }
        self.memory.extend_from_slice(&chunk);
        let over = match self.file {
            None => self.memory.len() as u64 > SPOOL_IN_MEMORY,
            Some(_) => self.memory.len() >= FILE_BATCH,
        };
        if over {
            self.flush_to_file().await?;
        }
        Ok(())
    }

    async fn flush_to_file(&mut self) -> std::io::Result<()> {
        let batch = self.memory.split().freeze();
        let file = self.file.take();
        let file = tokio::task::spawn_blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => tempfile::tempfile()?,
            };
            file.write_all(&batch)?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.file = Some(file);
        Ok(())
    }

    /// The spooled body, and the early path that saw it arrive.
    async fn finish(mut self) -> std::io::Result<(Spool, Option<EarlyImage>)> {
        let early = self.early.take();
        if self.file.is_none() {
            return Ok((Spool::Memory(self.memory.freeze()), early));
        }
        self.flush_to_file().await?;
        match self.file {
            Some(file) => Ok((Spool::File(file), early)),
            None => Err(std::io::Error::other("the spool file went missing")),
        }
    }
}
