//! The stored versions of a model: list, make current (rollback), delete; the pipeline's view.

use axum::extract::State;

use super::*;
use crate::db::firmware_versions as fw;
use crate::firmware::store::{self};
use crate::http::auth::{AdminEditor, AdminReader, PipelineCaller};
use crate::http::error::ApiError;
use crate::http::extract::{Json, Path};
use crate::state::AppState;

// ---------------------------------------------------------------------------------------------
// Versions

/// The stored firmware versions of a model, newest upload first, with artifact sizes and
/// SHA-256s, app descriptor facts, and which one is current.
#[utoipa::path(get, path = "/api/device-models/{id}/firmware/versions", tag = "firmware",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device model id")),
    responses((status = 200, body = FirmwareVersionList),
        (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list_versions(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<FirmwareVersionList>, ApiError> {
    // One snapshot: the version marked current is one of those listed.
    let mut tx = state.db.begin_read().await?;
    let model = fw::model_in(&mut tx, id)
        .await?
        .ok_or_else(|| super::model_not_found(id))?;
    let rows = fw::list(&mut tx, id).await?;
    tx.commit().await?;
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
        (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, description = "No such model or version", body = crate::http::error::ErrorBody)))]
pub async fn set_current(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<SetCurrentFirmware>,
) -> Result<Json<FirmwareUploadResponse>, ApiError> {
    // Every stored version is a key component, so it never holds a NUL; PostgreSQL would refuse
    // to even compare with one.
    if body.version.contains('\0') {
        return Err(ApiError::validation(
            "version must not contain NUL characters",
        ));
    }
    let code = store::set_current(&state.db, state.effects(), id, &body.version).await?;
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
        (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, description = "The version is current", body = crate::http::error::ErrorBody)))]
pub async fn remove_version(
    _: AdminEditor,
    State(state): State<AppState>,
    Path((id, version)): Path<(i64, String)>,
) -> Result<http::StatusCode, ApiError> {
    store::delete_version(&state.db, state.caches.as_ref(), id, &version).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// `DELETE …/firmware/versions` and `…/firmware/current` name versions called so (their paths are
/// taken by the list and the rollback routes).
pub(super) async fn remove_version_named_versions(
    editor: AdminEditor,
    state: State<AppState>,
    Path(id): Path<i64>,
) -> Result<http::StatusCode, ApiError> {
    remove_version(editor, state, Path((id, "versions".to_string()))).await
}

pub(super) async fn remove_version_named_current(
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
        (status = 404, body = crate::http::error::ErrorBody)))]
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
