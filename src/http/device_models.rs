//! `/api/device-models`: list, create, get, update and delete device models (SPEC §5, §6).
//!
//! Field names follow the Python service so its web UI keeps working: `config_schema` is sent and
//! returned as JSON *text* (the stored text, verbatim — the UI puts it in a text editor and
//! `JSON.parse`s it); `has_config_schema` and `device_count` are derived.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{AdminEditor, AdminReader};
use super::error::ApiError;
use super::extract::{Json, Path};
use crate::db::device_models::{self as models, DeviceModelRow};
use crate::fleet::ModelCode;
use crate::registry::models::{self as models_ops, SchemaChange};
use crate::registry::RegistryError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/device-models", get(list).post(create))
        .route(
            "/api/device-models/{id}",
            get(fetch).put(update).delete(remove),
        )
}

/// One entry of the model list.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceModelSummary {
    pub id: i64,
    pub code: String,
    pub name: String,
    /// The version served to devices, if any firmware was uploaded.
    pub firmware_version: Option<String>,
    pub has_config_schema: bool,
    pub device_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceModelList {
    pub device_models: Vec<DeviceModelSummary>,
    pub count: usize,
}

/// A model with everything about it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceModelResponse {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub firmware_version: Option<String>,
    /// The JSON Schema device configs must satisfy, as the JSON text it was sent as, or null.
    pub config_schema: Option<String>,
    pub has_config_schema: bool,
    pub device_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DeviceModelCreate {
    /// `^[a-z0-9_]{1,50}$`; cannot be changed later.
    pub code: String,
    /// 1-255 characters.
    pub name: String,
    /// JSON Schema for device configs, as JSON text.
    #[serde(default)]
    pub config_schema: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DeviceModelUpdate {
    /// New name; absent or null leaves it unchanged.
    #[serde(default)]
    pub name: Option<String>,
    /// New schema as JSON text; absent or null leaves it unchanged (as in the Python service),
    /// an empty string removes it.
    #[serde(default)]
    pub config_schema: Option<String>,
}

fn summary(row: DeviceModelRow) -> DeviceModelSummary {
    DeviceModelSummary {
        id: row.id,
        has_config_schema: row.config_schema.is_some(),
        code: row.code,
        name: row.name,
        firmware_version: row.firmware_version,
        device_count: row.device_count,
    }
}

fn full(row: DeviceModelRow) -> DeviceModelResponse {
    DeviceModelResponse {
        id: row.id,
        has_config_schema: row.config_schema.is_some(),
        config_schema: row.config_schema,
        code: row.code,
        name: row.name,
        firmware_version: row.firmware_version,
        device_count: row.device_count,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

pub fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("DeviceModel {id} was not found"))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(message) => ApiError::validation(message),
            e @ (RegistryError::ModelNotFound(_) | RegistryError::DeviceNotFound(_)) => {
                ApiError::NotFound(e.to_string())
            }
            RegistryError::Exists(message) => ApiError::RecordExists(message),
            RegistryError::Conflict(message) => ApiError::Conflict(message),
            // The detail (a panic's message) goes to the log, not to the client.
            RegistryError::Broken(message) => {
                tracing::error!(error = %message, "registry_operation_broke");
                ApiError::Internal("Internal error".into())
            }
            RegistryError::Busy(message) => ApiError::unavailable(message),
            RegistryError::Db(e) => e.into(),
            RegistryError::Key(e) => e.into(),
        }
    }
}

/// List device models, ordered by code.
#[utoipa::path(get, path = "/api/device-models", tag = "device models",
    security(("admin" = [])),
    responses((status = 200, body = DeviceModelList),
        (status = 401, body = super::error::ErrorBody)))]
pub async fn list(
    _: AdminReader,
    State(state): State<AppState>,
) -> Result<Json<DeviceModelList>, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let rows = models::list(&mut tx).await?;
    tx.commit().await?;
    let device_models: Vec<_> = rows.into_iter().map(summary).collect();
    Ok(Json(DeviceModelList {
        count: device_models.len(),
        device_models,
    }))
}

/// Create a device model. Requires the `editor` role.
#[utoipa::path(post, path = "/api/device-models", tag = "device models",
    security(("admin" = ["editor"])),
    request_body = DeviceModelCreate,
    responses((status = 201, body = DeviceModelResponse),
        (status = 400, body = super::error::ErrorBody),
        (status = 409, description = "A model with this code exists", body = super::error::ErrorBody)))]
pub async fn create(
    _: AdminEditor,
    State(state): State<AppState>,
    Json(body): Json<DeviceModelCreate>,
) -> Result<(StatusCode, Json<DeviceModelResponse>), ApiError> {
    let code = ModelCode::parse(&body.code).map_err(ApiError::validation)?;
    let name = models_ops::parse_name(&body.name)?;
    let schema = body
        .config_schema
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(models_ops::parse_schema)
        .transpose()?;
    let row = models_ops::create(&state.db, &code, name, schema.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(full(row))))
}

/// Get one device model.
#[utoipa::path(get, path = "/api/device-models/{id}", tag = "device models",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device model id")),
    responses((status = 200, body = DeviceModelResponse),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn fetch(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<DeviceModelResponse>, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let row = models::get(&mut tx, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    tx.commit().await?;
    Ok(Json(full(row)))
}

/// Update a model's name and config schema (the code is immutable). Requires `editor`.
#[utoipa::path(put, path = "/api/device-models/{id}", tag = "device models",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device model id")),
    request_body = DeviceModelUpdate,
    responses((status = 200, body = DeviceModelResponse),
        (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn update(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<DeviceModelUpdate>,
) -> Result<Json<DeviceModelResponse>, ApiError> {
    let schema = match body.config_schema.as_deref() {
        None => SchemaChange::Keep,
        Some(text) if text.trim().is_empty() => SchemaChange::Remove,
        Some(text) => SchemaChange::Set(text),
    };
    let row = models_ops::update(&state.db, id, body.name.as_deref(), schema).await?;
    Ok(Json(full(row)))
}

/// Delete a model, its firmware rows and (via the outbox) its firmware objects. Refused with 409
/// while devices use the model. Requires `editor`.
#[utoipa::path(delete, path = "/api/device-models/{id}", tag = "device models",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device model id")),
    responses((status = 204, description = "Deleted"),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "The model still has devices", body = super::error::ErrorBody)))]
pub async fn remove(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    models_ops::delete(&state.db, state.caches.as_ref(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}
